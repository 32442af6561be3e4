package main

import (
	"bufio"
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// applyConfig fills every flag the command line did not set, first from
// HERALD_<FLAG> (upper case, dashes as underscores), then from --config
// (lines "flag = value", # comments). A bad value names its setting.
func applyConfig(cmd *cobra.Command) error {
	file := map[string]string{}
	if path, _ := cmd.Flags().GetString("config"); path != "" {
		f, err := os.Open(path)
		if err != nil {
			return fmt.Errorf("invalid setting config: %v", err)
		}
		defer f.Close()
		sc := bufio.NewScanner(f)
		for n := 1; sc.Scan(); n++ {
			line := strings.TrimSpace(sc.Text())
			if line == "" || strings.HasPrefix(line, "#") {
				continue
			}
			k, v, ok := strings.Cut(line, "=")
			if !ok {
				return fmt.Errorf("invalid setting in %s line %d: want \"name = value\"", path, n)
			}
			k = strings.TrimSpace(k)
			if cmd.Flags().Lookup(k) == nil {
				return fmt.Errorf("invalid setting %s in %s line %d: no such setting for %q", k, path, n, cmd.Name())
			}
			file[k] = strings.Trim(strings.TrimSpace(v), `"`)
		}
	}
	var err error
	cmd.Flags().VisitAll(func(f *pflag.Flag) {
		if err != nil || f.Changed || f.Name == "config" || f.Name == "help" {
			return
		}
		env := "HERALD_" + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		v, ok := os.LookupEnv(env)
		src := env
		if !ok {
			v, ok = file[f.Name]
			src = "config file"
		}
		if !ok {
			return
		}
		if e := f.Value.Set(v); e != nil {
			err = fmt.Errorf("invalid setting %s (from %s): %v", f.Name, src, e)
		}
	})
	return err
}
