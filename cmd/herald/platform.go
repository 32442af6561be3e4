package main

import (
	"fmt"
	"os"
	"runtime/pprof"

	"github.com/spf13/cobra"

	"github.com/heraldhq/herald/internal/platform/sim"
)

// simDefaults is the simulator's options with every default filled in
// (sim.Options.EnsureDefaults, the one place they are written).
func simDefaults() sim.Options {
	var d sim.Options
	d.EnsureDefaults()
	return d
}

func simFlags(cmd *cobra.Command, o *sim.Options, devices *string) {
	f := cmd.Flags()
	d := simDefaults()
	f.IntVar(&o.Users, "users", d.Users, "number of simulated users")
	f.StringVar(&o.Prefix, "prefix", d.Prefix, "user number prefix; user i is prefix + i zero-padded to 11 digits")
	f.StringVar(devices, "devices", fmt.Sprintf("%d-%d", d.DevicesMin, d.DevicesMax), "devices per user, MIN-MAX")
	f.Float64Var(&o.UnknownShare, "unknown-share", d.UnknownShare, "share of numbers not registered (unknown_user; negative: none)")
	f.IntVar(&o.PreKeys, "prekeys", d.PreKeys, "one-time prekeys per device before the pool is exhausted")
	f.Float64Var(&o.ReadShare, "read-share", d.ReadShare, "share of delivered messages reported read")
	f.Float64Var(&o.ReportRate, "report-rate", 0, "share of delivered messages reported as spam")
	f.IntVar(&o.LatencyMS, "latency-ms", 0, "fault: added latency per /v1/messages request")
	f.Float64Var(&o.ThrottleRate, "throttle-rate", 0, "fault: per envelope, answer throttled")
	f.Float64Var(&o.UnavailableRate, "unavailable-rate", 0, "fault: per envelope, answer unavailable")
	f.Float64Var(&o.Status429Rate, "http429-rate", 0, "fault: per request, answer HTTP 429")
	f.Float64Var(&o.Status503Rate, "http503-rate", 0, "fault: per request, answer HTTP 503")
	f.Float64Var(&o.ReinstallRate, "reinstall-rate", 0, "fault: per envelope, the device reinstalls (new identity, lost sessions)")
	f.Float64Var(&o.DecryptFailedRate, "decrypt-failed-rate", 0, "fault: per accepted envelope, a decrypt_failed retry receipt")
	f.Float64Var(&o.ReplyShare, "reply-share", d.ReplyShare, "users who write: share of decrypted messages a device answers (to --inbound-url)")
	f.Float64Var(&o.StopShare, "stop-share", 0, "users who write: share of their messages that are STOP (an opt-out)")
	f.Float64Var(&o.WriteRate, "write-rate", 0, "users who write: messages per second users send unprompted to businesses (to --inbound-url)")
	f.Float64Var(&o.InboundDupRate, "inbound-dup-rate", 0, "fault: share of accepted user envelopes sent once more")
	f.Float64Var(&o.InboundCorruptRate, "inbound-corrupt-rate", 0, "fault: share of user envelopes with a flipped bit (Herald answers bad_message)")
}

func platformCmd() *cobra.Command {
	var o sim.Options
	var devices, cpuProfile string
	cmd := &cobra.Command{
		Use: "platform",
		Example: "  herald platform --listen 127.0.0.1:9090 --events-url http://127.0.0.1:8080/v1/platform/events --secret s3cret --users 100000\n" +
			"  herald platform --events-url http://127.0.0.1:8080/v1/platform/events --inbound-url http://127.0.0.1:8080/v1/platform/inbound --reply-share 0.1",
		Short: "Run the platform simulator (Signal recipients on go.mau.fi/libsignal) as its own process",
		RunE: func(cmd *cobra.Command, args []string) error {
			var err error
			if o.DevicesMin, o.DevicesMax, err = sim.ParseDevices(devices); err != nil {
				return fmt.Errorf("invalid setting devices: %v", err)
			}
			if cpuProfile != "" { // before the listener, so a bad path leaves nothing open
				f, err := os.Create(cpuProfile)
				if err != nil {
					return fmt.Errorf("invalid setting cpuprofile: %v", err)
				}
				defer f.Close()
				if err := pprof.StartCPUProfile(f); err != nil {
					return fmt.Errorf("invalid setting cpuprofile: %v", err)
				}
				defer pprof.StopCPUProfile()
			}
			s, err := sim.New(o)
			if err != nil {
				return err
			}
			s.Start()
			fmt.Printf("listening on %s\n", s.URL())
			<-cmd.Context().Done()
			return s.Close()
		},
	}
	cmd.Flags().StringVar(&o.Listen, "listen", "127.0.0.1:9100", "listen address")
	cmd.Flags().StringVar(&o.EventsURL, "events-url", "", "Herald's /v1/platform/events URL (empty: no events)")
	cmd.Flags().StringVar(&o.InboundURL, "inbound-url", "", "Herald's /v1/platform/inbound URL, where users who write send (empty: users never write)")
	cmd.Flags().StringVar(&o.Secret, "secret", "platform-secret", "shared secret (Bearer from Herald; signs events)")
	cmd.Flags().StringVar(&cpuProfile, "cpuprofile", "", "write a CPU profile of the simulator to this file, from start to exit (profiling; empty: off)")
	simFlags(cmd, &o, &devices)
	return cmd
}
