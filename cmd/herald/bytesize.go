package main

import (
	"fmt"
	"strings"

	"github.com/dustin/go-humanize"
	"github.com/spf13/pflag"
)

// byteSize is a flag holding a number of bytes, written with a unit or not:
// "8GiB", "512MiB", "1.5GB", "65536"; "-1" where the flag means "off".
type byteSize struct {
	p       *int64
	minusOK bool // -1 is a valid value (off / none)
}

// byteSizeVar defines a byte-size flag on f; minusOK lets -1 mean off.
func byteSizeVar(f *pflag.FlagSet, p *int64, name string, value int64, minusOK bool, usage string) {
	*p = value
	f.Var(&byteSize{p: p, minusOK: minusOK}, name, usage+" (units allowed: 64KiB, 512MiB, 8GiB, 1.5GB)")
}

func (b *byteSize) Type() string { return "bytes" }

func (b *byteSize) String() string {
	if b.p == nil {
		return "0"
	}
	return formatBytes(*b.p)
}

func (b *byteSize) Set(s string) error {
	s = strings.TrimSpace(s)
	if s == "-1" && b.minusOK {
		*b.p = -1
		return nil
	}
	if strings.HasPrefix(s, "-") {
		return fmt.Errorf("%q: a size cannot be negative", s)
	}
	n, err := humanize.ParseBytes(s)
	if err != nil {
		return fmt.Errorf("%q is not a size (say 65536, 64KiB, 512MiB or 8GiB)", s)
	}
	if n > 1<<62 {
		return fmt.Errorf("%q is too large", s)
	}
	*b.p = int64(n)
	return nil
}

// formatBytes writes n exactly, in the largest binary unit that divides it:
// 8GiB, 256MiB, 65536 → 64KiB, 1000 → 1000.
func formatBytes(n int64) string {
	for _, u := range []struct {
		suffix string
		size   int64
	}{{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if n > 0 && n%u.size == 0 {
			return fmt.Sprintf("%d%s", n/u.size, u.suffix)
		}
	}
	return fmt.Sprint(n)
}
