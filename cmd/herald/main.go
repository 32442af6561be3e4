// Command herald is Herald's one binary: serve, platform, demo, load, admin.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
)

func main() {
	root := &cobra.Command{
		Use:           "herald",
		Short:         "Herald: bulk business messaging with Signal encryption, durable queueing and integrity limits",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(serveCmd(), platformCmd(), demoCmd(), loadCmd(), adminCmd())
	for _, c := range root.Commands() {
		c.Flags().String("config", "", "optional config file: lines \"flag = value\" (flags and HERALD_* variables win)")
		c.PreRunE = func(cmd *cobra.Command, args []string) error { return applyConfig(cmd) }
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := root.ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "herald:", err)
		os.Exit(2)
	}
}
