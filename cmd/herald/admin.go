package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"
)

// adminClient is what every admin subcommand shares: where the server is
// and the admin token (or the data directory holding it).
type adminClient struct {
	url, token, data string
	biz              string // --business of the subcommands that take one
}

// call sends one admin API request and prints its JSON answer.
func (a *adminClient) call(method, path string, body any) error {
	if a.token == "" {
		b, err := os.ReadFile(filepath.Join(a.data, "admin-token"))
		if err != nil {
			return fmt.Errorf("invalid setting admin-token: not given and %v", err)
		}
		a.token = strings.TrimSpace(string(b))
	}
	var res map[string]any
	if err := newAPIClient(a.url, a.token).jsonCall(method, path, body, &res); err != nil {
		return err
	}
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(res)
}

// bizCmd is a subcommand about one business (--business).
func (a *adminClient) bizCmd(use, short string, run func(cmd *cobra.Command) error) *cobra.Command {
	c := &cobra.Command{Use: use, Short: short, RunE: func(cmd *cobra.Command, _ []string) error { return run(cmd) },
		Example: "  herald admin " + use + " --business biz_0123456789abcdef"}
	c.Flags().StringVar(&a.biz, "business", "", "business id")
	c.MarkFlagRequired("business")
	return c
}

func adminCmd() *cobra.Command {
	a := &adminClient{}
	cmd := &cobra.Command{
		Use:     "admin",
		Example: "  herald admin create-business --name Acme --phone 15550001111 --tier 10k\n  herald admin set --business biz_0123456789abcdef --max-queued-bytes 1073741824",
		Short:   "Client of the admin API: businesses, phone numbers, tokens, tier, mps, pause",
	}
	pf := cmd.PersistentFlags()
	pf.StringVar(&a.url, "url", "http://"+defaults().Listen, "Herald base URL")
	pf.StringVar(&a.token, "admin-token", "", "admin token (default: read <data>/admin-token)")
	pf.StringVar(&a.data, "data", defaults().DataDir, "data directory holding admin-token")

	var phone, tokenID string
	addNumber := a.bizCmd("add-number", "Add a phone number to a business", func(*cobra.Command) error {
		return a.call("POST", "/admin/v1/businesses/"+a.biz+"/phone_numbers", map[string]string{"phone_number": phone})
	})
	addNumber.Flags().StringVar(&phone, "phone", "", "phone number")
	addNumber.MarkFlagRequired("phone")
	newToken := a.bizCmd("new-token", "Issue another token (printed once)", func(*cobra.Command) error {
		return a.call("POST", "/admin/v1/businesses/"+a.biz+"/tokens", nil)
	})
	revoke := a.bizCmd("revoke-token", "Revoke a token at once", func(*cobra.Command) error {
		return a.call("DELETE", "/admin/v1/businesses/"+a.biz+"/tokens/"+tokenID, nil)
	})
	revoke.Flags().StringVar(&tokenID, "token-id", "", "token id")
	revoke.MarkFlagRequired("token-id")
	show := a.bizCmd("show", "Show a business", func(*cobra.Command) error {
		return a.call("GET", "/admin/v1/businesses/"+a.biz, nil)
	})
	list := &cobra.Command{Use: "list", Short: "List businesses, their phone numbers and token ids (never tokens)",
		Example: "  herald admin list", RunE: func(*cobra.Command, []string) error {
			return a.call("GET", "/admin/v1/businesses", nil)
		}}
	cmd.AddCommand(a.createCmd(), addNumber, newToken, revoke, a.setCmd(), show, list)
	return cmd
}

// createCmd: herald admin create-business.
func (a *adminClient) createCmd() *cobra.Command {
	var name, tier string
	var phones []string
	var mps int
	var identity bool
	create := &cobra.Command{Use: "create-business", Short: "Create a business (prints its token once)",
		Example: "  herald admin create-business --name Acme --phone 15550001111 --tier 10k --mps 80",
		RunE: func(*cobra.Command, []string) error {
			return a.call("POST", "/admin/v1/businesses", map[string]any{"name": name, "phone_numbers": phones,
				"tier": tier, "mps": mps, "identity_check": identity})
		}}
	create.Flags().StringVar(&name, "name", "", "business name")
	create.Flags().StringSliceVar(&phones, "phone", nil, "business phone number (repeatable)")
	create.Flags().StringVar(&tier, "tier", "2k", "messaging tier: 250, 2k, 10k, 100k, unlimited")
	create.Flags().IntVar(&mps, "mps", 80, "messages per second per phone number")
	create.Flags().BoolVar(&identity, "identity-check", false, "fail messages when a recipient's identity key changes")
	create.MarkFlagRequired("name")
	create.MarkFlagRequired("phone")
	return create
}

// setCmd: herald admin set (only the flags given are sent).
func (a *adminClient) setCmd() *cobra.Command {
	var tier string
	var mps int
	var maxQueued int64
	var paused, resumed bool
	var stopKeywords []string
	set := a.bizCmd("set", "Set tier, mps, the share of the queue or the stop keywords, pause or resume", func(cmd *cobra.Command) error {
		if paused && resumed {
			return errors.New("invalid setting pause/resume: choose one")
		}
		patch := map[string]any{}
		if cmd.Flags().Changed("tier") {
			patch["tier"] = tier
		}
		if cmd.Flags().Changed("mps") {
			patch["mps"] = mps
		}
		if cmd.Flags().Changed("max-queued-bytes") {
			patch["max_queued_bytes"] = maxQueued
		}
		if paused || resumed {
			patch["paused"] = paused
		}
		if cmd.Flags().Changed("stop-keywords") {
			patch["stop_keywords"] = stopKeywords
		}
		return a.call("PATCH", "/admin/v1/businesses/"+a.biz, patch)
	})
	set.Flags().StringVar(&tier, "tier", "", "messaging tier")
	set.Flags().IntVar(&mps, "mps", 0, "messages per second")
	byteSizeVar(set.Flags(), &maxQueued, "max-queued-bytes", 0, false, "the business's share of the queue (0: the server's default share)")
	set.Flags().BoolVar(&paused, "pause", false, "pause the business")
	set.Flags().BoolVar(&resumed, "resume", false, "resume the business")
	set.Flags().StringSliceVar(&stopKeywords, "stop-keywords", nil, "whole-message keywords that opt a user out, comma-separated (\"\": STOP, UNSUBSCRIBE, ALTO)")
	return set
}
