package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/heraldhq/herald/internal/clock"
	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
)

// campaignClient is what every campaign subcommand shares: a client of the
// business API (--url, --token; HERALD_URL, HERALD_TOKEN).
type campaignClient struct {
	url, token string
	out        io.Writer
}

func (c *campaignClient) api() (*apiClient, error) {
	if c.token == "" {
		return nil, usageError{errors.New("a business token is needed: --token or HERALD_TOKEN")}
	}
	return newAPIClient(c.url, c.token), nil
}

// campaignView is GET /v1/campaigns/{id}, as the CLI reads it.
type campaignView struct {
	ID        string           `json:"campaign_id"`
	Name      string           `json:"name"`
	State     string           `json:"state"`
	Accepted  int64            `json:"accepted"`
	Rejected  int64            `json:"rejected"`
	Counts    map[string]int64 `json:"counts"`
	Totals    map[string]int64 `json:"totals"`
	Failures  map[string]int64 `json:"failures"`
	Rate      float64          `json:"rate_per_second"`
	CreatedAt string           `json:"created_at"`
	SendAt    string           `json:"send_at"`
}

// final reports whether nothing about the campaign can change any more
// (statuses of sent messages still can: delivered, read).
func (v *campaignView) final() bool { return v.State == "done" || v.State == "canceled" }

// ended is how many messages reached an end: sent, failed or canceled.
func (v *campaignView) ended() int64 {
	return v.Totals["sent"] + v.Totals["failed"] + v.Totals["canceled"]
}

var statusOrder = []string{"queued", "sent", "delivered", "read", "failed", "canceled"}

func (v *campaignView) countsLine() string {
	var parts []string
	for _, k := range statusOrder {
		parts = append(parts, fmt.Sprintf("%s %d", k, v.Counts[k]))
	}
	return strings.Join(parts, ", ")
}

func campaignCmd() *cobra.Command {
	c := &campaignClient{out: os.Stdout}
	cmd := &cobra.Command{
		Use:   "campaign",
		Short: "Client of the business API for campaigns: list, show, watch, pause, resume, cancel",
		Example: "  export HERALD_TOKEN=hrld_…\n  herald campaign list --phone-number-id pn_0123456789abcdef\n" +
			"  herald campaign watch cmp_0123456789abcdef0123\n  herald campaign pause cmp_0123456789abcdef0123",
	}
	pf := cmd.PersistentFlags()
	pf.StringVar(&c.url, "url", "http://"+defaults().Listen, "Herald base URL (HERALD_URL)")
	pf.StringVar(&c.token, "token", "", "the business's token (HERALD_TOKEN)")

	var pn string
	var limit int
	var all, asJSON bool
	list := &cobra.Command{Use: "list", Short: "A phone number's campaigns, newest first", Args: cobra.NoArgs,
		Example: "  herald campaign list --phone-number-id pn_0123456789abcdef --limit 10",
		RunE:    func(*cobra.Command, []string) error { return c.list(pn, limit, all, asJSON) }}
	list.Flags().StringVar(&pn, "phone-number-id", "", "the phone number id")
	list.Flags().IntVar(&limit, "limit", 25, "campaigns per page (1-100)")
	list.Flags().BoolVar(&all, "all", false, "every page, not only the first")
	list.Flags().BoolVar(&asJSON, "json", false, "print the API's JSON")
	list.MarkFlagRequired("phone-number-id")

	show := &cobra.Command{Use: "show CAMPAIGN_ID", Short: "A campaign's state and counts (the API's JSON)", Args: cobra.ExactArgs(1),
		Example: "  herald campaign show cmp_0123456789abcdef0123",
		RunE: func(_ *cobra.Command, args []string) error {
			var v map[string]any
			if err := c.get("/v1/campaigns/"+url.PathEscape(args[0]), &v); err != nil {
				return err
			}
			return printJSON(c.out, v)
		}}

	var interval time.Duration
	watch := &cobra.Command{Use: "watch CAMPAIGN_ID", Short: "A live progress bar, rate and counts by status, until the campaign is done or canceled",
		Example: "  herald campaign watch cmp_0123456789abcdef0123 --interval 2s",
		Args:    cobra.ExactArgs(1), RunE: func(cmd *cobra.Command, args []string) error { return c.watch(cmd, args[0], interval) }}
	watch.Flags().DurationVar(&interval, "interval", time.Second, "how often to ask")

	control := func(verb, short string) *cobra.Command {
		return &cobra.Command{Use: verb + " CAMPAIGN_ID", Short: short, Args: cobra.ExactArgs(1),
			Example: "  herald campaign " + verb + " cmp_0123456789abcdef0123",
			RunE: func(_ *cobra.Command, args []string) error {
				a, err := c.api()
				if err != nil {
					return err
				}
				var v campaignView
				if _, err := a.call("POST", "/v1/campaigns/"+url.PathEscape(args[0])+"/"+verb, nil, "", &v); err != nil {
					return err
				}
				fmt.Fprintf(c.out, "campaign %s: %s (%s)\n", v.ID, v.State, v.countsLine())
				return nil
			}}
	}
	cmd.AddCommand(list, show, watch,
		control("pause", "Pause: nothing more is sent until resume"),
		control("resume", "Resume a paused campaign"),
		control("cancel", "Cancel: every message not yet sent ends canceled; nothing more is sent"))
	return cmd
}

func (c *campaignClient) get(path string, out any) error {
	a, err := c.api()
	if err != nil {
		return err
	}
	_, err = a.call("GET", path, nil, "", out)
	return err
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func (c *campaignClient) list(pn string, limit int, all, asJSON bool) error {
	if limit < 1 || limit > 100 {
		return usageError{fmt.Errorf("invalid setting limit: %d is not from 1 to 100", limit)}
	}
	path := fmt.Sprintf("/v1/%s/campaigns?limit=%d", url.PathEscape(pn), limit)
	tw := tabwriter.NewWriter(c.out, 0, 4, 2, ' ', 0)
	if !asJSON {
		fmt.Fprintln(tw, "CAMPAIGN\tNAME\tSTATE\tACCEPTED\tQUEUED\tSENT\tDELIVERED\tREAD\tFAILED\tCANCELED\tCREATED")
	}
	for path != "" {
		var page struct {
			Data   []json.RawMessage `json:"data"`
			Paging struct {
				Next string `json:"next"`
			} `json:"paging"`
		}
		if err := c.get(path, &page); err != nil {
			return err
		}
		for _, raw := range page.Data {
			if asJSON {
				fmt.Fprintln(c.out, string(raw))
				continue
			}
			var v campaignView
			if err := json.Unmarshal(raw, &v); err != nil {
				return fmt.Errorf("answer is not a campaign: %v", err)
			}
			name := v.Name
			if len(name) > 24 {
				name = name[:23] + "…"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%s\n", v.ID, name, v.State, v.Accepted, v.Counts["queued"],
				v.Counts["sent"], v.Counts["delivered"], v.Counts["read"], v.Counts["failed"], v.Counts["canceled"], v.CreatedAt)
		}
		path = ""
		if all {
			path = page.Paging.Next
		}
	}
	return tw.Flush()
}

// watch polls the campaign and draws a progress bar of the messages that
// reached an end (sent, failed, canceled) with the rate and the counts; it
// returns when the campaign is done or canceled.
func (c *campaignClient) watch(cmd *cobra.Command, id string, interval time.Duration) error {
	if interval < 100*time.Millisecond {
		return usageError{fmt.Errorf("invalid setting interval: %s is below 100ms", interval)}
	}
	path := "/v1/campaigns/" + url.PathEscape(id)
	var v campaignView
	if err := c.get(path, &v); err != nil {
		return err
	}
	bar := progressbar.NewOptions64(max(v.Accepted, 1), progressbar.OptionSetWriter(os.Stderr), progressbar.OptionSetWidth(30),
		progressbar.OptionShowCount(), progressbar.OptionThrottle(100*time.Millisecond), progressbar.OptionSetPredictTime(true))
	ctx := cmd.Context()
	last, lastAt := v.ended(), clock.Wall() // a measurement: real time
	rate := 0.0
	for {
		if n := clock.Wall(); n.Sub(lastAt) > 0 {
			if d := v.ended() - last; d > 0 {
				rate = float64(d) / n.Sub(lastAt).Seconds()
			} else if v.State != "running" {
				rate = 0
			}
			last, lastAt = v.ended(), n
		}
		bar.ChangeMax64(max(v.Accepted, 1))
		bar.Describe(fmt.Sprintf("%s %s %.0f/s | %s", v.ID, v.State, rate, v.countsLine()))
		bar.Set64(v.ended())
		if v.final() {
			bar.Finish()
			fmt.Fprintln(os.Stderr)
			fmt.Fprintf(c.out, "campaign %s: %s; %s%s\n", v.ID, v.State, v.countsLine(), failuresLine(v.Failures))
			return nil
		}
		select {
		case <-ctx.Done():
			fmt.Fprintln(os.Stderr)
			return ctx.Err()
		case <-time.After(interval):
		}
		if err := c.get(path, &v); err != nil {
			return err
		}
	}
}

func failuresLine(f map[string]int64) string {
	if len(f) == 0 {
		return ""
	}
	var codes []string
	for code := range f {
		codes = append(codes, code)
	}
	sort.Strings(codes)
	var parts []string
	for _, code := range codes {
		parts = append(parts, fmt.Sprintf("%s×%d", code, f[code]))
	}
	return "; failures by code: " + strings.Join(parts, ", ")
}
