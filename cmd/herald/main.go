package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"strings"
	"syscall"

	"github.com/spf13/cobra"
)

func main() {
	root := &cobra.Command{
		Use:           "herald",
		Short:         "Herald: bulk business messaging with Signal encryption, durable queueing and integrity limits",
		SilenceUsage:  true,
		SilenceErrors: true,
		Version:       version(),
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	code := run(ctx, root, os.Args[1:])
	stop()
	os.Exit(code)
}

// usageError is a command line the program cannot understand (exit 2);
// everything else that stops it, invalid settings included, exits 1.
type usageError struct{ error }

// run executes the command line and returns the exit code.
func run(ctx context.Context, root *cobra.Command, args []string) int {
	root.AddCommand(serveCmd(), platformCmd(), demoCmd(), loadCmd(), adminCmd(), campaignCmd())
	flagErr := func(_ *cobra.Command, err error) error { return usageError{err} }
	root.SetFlagErrorFunc(flagErr)
	// Every command that runs (admin's subcommands included) takes --config
	// and HERALD_* variables.
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		for _, sub := range c.Commands() {
			walk(sub)
		}
		c.SetFlagErrorFunc(flagErr)
		if c.RunE != nil && c.Flags().Lookup("config") == nil {
			c.Flags().String("config", "", "optional config file: lines \"flag = value\" (flags and HERALD_* variables win)")
			c.PreRunE = func(cmd *cobra.Command, args []string) error {
				if err := applyConfig(cmd); err != nil {
					return usageError{err} // a setting from HERALD_* or --config it cannot read
				}
				return nil
			}
		}
	}
	walk(root)
	root.SetArgs(args)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return 0
	}
	fmt.Fprintln(os.Stderr, "herald:", err)
	var ue usageError
	if errors.As(err, &ue) || strings.HasPrefix(err.Error(), "unknown command") || strings.HasPrefix(err.Error(), "required flag") || strings.HasPrefix(err.Error(), "accepts ") {
		return 2
	}
	return 1
}

// version is the binary's version and VCS revision, from its build
// information (go install'ed or built in a checkout).
func version() string {
	v, rev := "(devel)", ""
	if bi, ok := debug.ReadBuildInfo(); ok {
		if bi.Main.Version != "" {
			v = bi.Main.Version
		}
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" && len(s.Value) >= 12 {
				rev = " " + s.Value[:12]
			}
		}
	}
	return v + rev + " " + runtime.Version()
}
