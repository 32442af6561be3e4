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

func adminCmd() *cobra.Command {
	var url, token, data string
	cmd := &cobra.Command{
		Use:   "admin",
		Short: "Client of the admin API: businesses, phone numbers, tokens, tier, mps, pause",
	}
	client := func() (*apiClient, error) {
		if token == "" {
			b, err := os.ReadFile(filepath.Join(data, "admin-token"))
			if err != nil {
				return nil, fmt.Errorf("invalid setting admin-token: not given and %v", err)
			}
			token = strings.TrimSpace(string(b))
		}
		return newAPIClient(url, token), nil
	}
	out := func(v any) error {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	}
	pf := cmd.PersistentFlags()
	pf.StringVar(&url, "url", "http://"+defaults().Listen, "Herald base URL")
	pf.StringVar(&token, "admin-token", "", "admin token (default: read <data>/admin-token)")
	pf.StringVar(&data, "data", defaults().DataDir, "data directory holding admin-token")

	var name, tier string
	var phones []string
	var mps int
	var identity bool
	create := &cobra.Command{Use: "create-business", Short: "Create a business (prints its token once)",
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := client()
			if err != nil {
				return err
			}
			var res map[string]any
			if err := c.jsonCall("POST", "/admin/v1/businesses", map[string]any{"name": name, "phone_numbers": phones,
				"tier": tier, "mps": mps, "identity_check": identity}, &res); err != nil {
				return err
			}
			return out(res)
		}}
	create.Flags().StringVar(&name, "name", "", "business name")
	create.Flags().StringSliceVar(&phones, "phone", nil, "business phone number (repeatable)")
	create.Flags().StringVar(&tier, "tier", "2k", "messaging tier: 250, 2k, 10k, 100k, unlimited")
	create.Flags().IntVar(&mps, "mps", 80, "messages per second per phone number")
	create.Flags().BoolVar(&identity, "identity-check", false, "fail messages when a recipient's identity key changes")

	var biz, phone, tokenID string
	var paused, resumed bool
	bizFlag := func(c *cobra.Command) { c.Flags().StringVar(&biz, "business", "", "business id") }
	addNumber := &cobra.Command{Use: "add-number", Short: "Add a phone number to a business",
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := client()
			if err != nil {
				return err
			}
			var res map[string]any
			if err := c.jsonCall("POST", "/admin/v1/businesses/"+biz+"/phone_numbers", map[string]string{"phone_number": phone}, &res); err != nil {
				return err
			}
			return out(res)
		}}
	bizFlag(addNumber)
	addNumber.Flags().StringVar(&phone, "phone", "", "phone number")
	newToken := &cobra.Command{Use: "new-token", Short: "Issue another token (printed once)",
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := client()
			if err != nil {
				return err
			}
			var res map[string]any
			if err := c.jsonCall("POST", "/admin/v1/businesses/"+biz+"/tokens", nil, &res); err != nil {
				return err
			}
			return out(res)
		}}
	bizFlag(newToken)
	revoke := &cobra.Command{Use: "revoke-token", Short: "Revoke a token at once",
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := client()
			if err != nil {
				return err
			}
			var res map[string]any
			if err := c.jsonCall("DELETE", "/admin/v1/businesses/"+biz+"/tokens/"+tokenID, nil, &res); err != nil {
				return err
			}
			return out(res)
		}}
	bizFlag(revoke)
	revoke.Flags().StringVar(&tokenID, "token-id", "", "token id")
	var maxQueued int64
	set := &cobra.Command{Use: "set", Short: "Set tier, mps or the share of the queue, pause or resume",
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := client()
			if err != nil {
				return err
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
			if paused && resumed {
				return errors.New("invalid setting pause/resume: choose one")
			}
			if paused {
				patch["paused"] = true
			}
			if resumed {
				patch["paused"] = false
			}
			var res map[string]any
			if err := c.jsonCall("PATCH", "/admin/v1/businesses/"+biz, patch, &res); err != nil {
				return err
			}
			return out(res)
		}}
	bizFlag(set)
	set.Flags().StringVar(&tier, "tier", "", "messaging tier")
	set.Flags().IntVar(&mps, "mps", 0, "messages per second")
	set.Flags().Int64Var(&maxQueued, "max-queued-bytes", 0, "the business's share of the queue in bytes (0: the server's default share)")
	set.Flags().BoolVar(&paused, "pause", false, "pause the business")
	set.Flags().BoolVar(&resumed, "resume", false, "resume the business")
	show := &cobra.Command{Use: "show", Short: "Show a business",
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := client()
			if err != nil {
				return err
			}
			var res map[string]any
			if err := c.jsonCall("GET", "/admin/v1/businesses/"+biz, nil, &res); err != nil {
				return err
			}
			return out(res)
		}}
	bizFlag(show)
	cmd.AddCommand(create, addNumber, newToken, revoke, set, show)
	return cmd
}
