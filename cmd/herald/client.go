package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// apiClient is a small client of Herald's HTTP API (admin, demo and load).
type apiClient struct {
	base  string
	token string
	hc    *http.Client
}

func newAPIClient(base, token string) *apiClient {
	return &apiClient{base: strings.TrimRight(base, "/"), token: token, hc: &http.Client{Timeout: 10 * time.Minute,
		Transport: &http.Transport{MaxIdleConnsPerHost: 512, MaxConnsPerHost: 512}}}
}

// call sends a JSON (or raw) body and decodes a JSON answer; non-2xx is an error with the API's message.
func (c *apiClient) call(method, path string, body io.Reader, contentType string, out any) (int, error) {
	req, err := http.NewRequest(method, c.base+path, body)
	if err != nil {
		return 0, err
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode/100 != 2 {
		var e struct {
			Error struct {
				Message string `json:"message"`
				Code    int    `json:"code"`
				Details string `json:"details"`
			} `json:"error"`
		}
		json.Unmarshal(b, &e)
		return resp.StatusCode, &apiError{Status: resp.StatusCode, Code: e.Error.Code, Msg: e.Error.Message, Details: e.Error.Details}
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			return resp.StatusCode, fmt.Errorf("answer is not JSON: %v", err)
		}
	}
	return resp.StatusCode, nil
}

func (c *apiClient) jsonCall(method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, _ := json.Marshal(in)
		body = strings.NewReader(string(b))
	}
	_, err := c.call(method, path, body, "application/json", out)
	return err
}

type apiError struct {
	Status, Code int
	Msg, Details string
}

func (e *apiError) Error() string {
	s := fmt.Sprintf("HTTP %d, code %d: %s", e.Status, e.Code, e.Msg)
	if e.Details != "" {
		s += " (" + e.Details + ")"
	}
	return s
}

func loopbackOnly(raw string, allowRemote bool) error {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" {
		return fmt.Errorf("invalid setting url: %q is not an absolute URL", raw)
	}
	h := u.Hostname()
	if allowRemote || h == "localhost" || strings.HasPrefix(h, "127.") || h == "::1" {
		return nil
	}
	return fmt.Errorf("invalid setting url: %s is not loopback; pass --allow-remote to load a remote Herald", h)
}

type campaignStatus struct {
	Accepted int              `json:"accepted"`
	Counts   map[string]int64 `json:"counts"` // where each message is now
	Totals   map[string]int64 `json:"totals"` // how many ever reached each status
	Failures map[string]int64 `json:"failures"`
	Rate     float64          `json:"rate_per_second"`
}

// done is how many messages are sent or failed (what is left is queued).
func (s campaignStatus) done() int64 { return s.Totals["sent"] + s.Totals["failed"] }
