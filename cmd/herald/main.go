package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
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
	root.AddCommand(serveCmd(), platformCmd(), demoCmd(), loadCmd(), adminCmd())
	flagErr := func(_ *cobra.Command, err error) error { return usageError{err} }
	root.SetFlagErrorFunc(flagErr)
	for _, c := range root.Commands() {
		c.Flags().String("config", "", "optional config file: lines \"flag = value\" (flags and HERALD_* variables win)")
		c.PreRunE = func(cmd *cobra.Command, args []string) error { return applyConfig(cmd) }
		c.SetFlagErrorFunc(flagErr)
	}
	root.SetArgs(args)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return 0
	}
	fmt.Fprintln(os.Stderr, "herald:", err)
	var ue usageError
	if errors.As(err, &ue) || strings.HasPrefix(err.Error(), "unknown command") {
		return 2
	}
	return 1
}
