// Command herald is Herald's one binary. Each subcommand parses flags (and
// HERALD_* environment variables) into a configuration and hands it to the
// packages that do the work:
//
//	serve     a server (internal/node): flags default to node.Config's defaults
//	platform  the platform simulator as its own process (internal/platform/sim)
//	demo      a server with the simulator, a 20,000-recipient campaign, a summary
//	load      a load generator against a running server
//	admin     a client of the admin API
//
// Exit codes: 0 success, 1 a runtime failure or an invalid setting, 2 a
// usage error.
//
// # Files
//
//	main.go      the root command and exit codes
//	serve.go     herald serve and the defaults every subcommand shows
//	platform.go  herald platform
//	demo.go      herald demo
//	load.go      herald load
//	admin.go     herald admin
//	client.go    the HTTP client admin and load share
//	config.go    configuration files and the environment
package main
