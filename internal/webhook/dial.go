package webhook

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"strings"
	"time"
)

// ErrForbiddenAddress is a webhook destination Herald does not reach: a
// loopback, private, link-local, multicast, unspecified or metadata address
// (the business could otherwise make Herald call its own admin API or a
// cloud metadata service), unless the operator allowed its range.
var ErrForbiddenAddress = errors.New("webhook: destination not allowed")

// metadataHosts are cloud metadata names, refused by name as well.
var metadataHosts = map[string]bool{
	"metadata": true, "metadata.google.internal": true, "metadata.goog": true,
	"instance-data": true, "instance-data.ec2.internal": true, "metadata.azure.internal": true,
}

var cgnat = netip.MustParsePrefix("100.64.0.0/10")
var thisNet = netip.MustParsePrefix("0.0.0.0/8")

// guard decides which addresses webhooks may reach.
type guard struct{ allow []netip.Prefix }

func (g guard) allowed(ip netip.Addr) bool {
	ip = ip.Unmap()
	for _, p := range g.allow {
		if p.Contains(ip) {
			return true
		}
	}
	switch {
	case ip.IsLoopback(), ip.IsPrivate(), ip.IsLinkLocalUnicast(), ip.IsLinkLocalMulticast(),
		ip.IsInterfaceLocalMulticast(), ip.IsMulticast(), ip.IsUnspecified(), cgnat.Contains(ip), thisNet.Contains(ip):
		return false
	}
	return ip.IsValid()
}

// checkURL refuses, when the configuration is set, what can be refused
// without resolving: credentials in the URL, metadata names, literal
// addresses outside the allowed ranges ("localhost" is loopback).
func (g guard) checkURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil {
		return ErrInvalid
	}
	if u.User != nil {
		return fmt.Errorf("%w: the url must not carry credentials (user:password@); authenticate with the signature", ErrInvalid)
	}
	host := strings.ToLower(u.Hostname())
	if metadataHosts[host] {
		return fmt.Errorf("%w: %s is a metadata service", ErrForbiddenAddress, host)
	}
	if host == "localhost" || strings.HasSuffix(host, ".localhost") {
		host = "127.0.0.1"
	}
	if ip, err := netip.ParseAddr(host); err == nil && !g.allowed(ip) {
		return fmt.Errorf("%w: %s is a loopback, private, link-local or reserved address (the operator may allow a range with --webhook-allow)", ErrForbiddenAddress, ip)
	}
	return nil
}

// dial is the webhook client's dialer: it resolves the host itself and
// connects only to an allowed address, the one it checked (a name that
// resolves to an allowed address when the URL is set and to a private one
// later, DNS rebinding, is refused at the connection).
func (g guard) dial(addr string, timeout time.Duration) (net.Conn, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	if metadataHosts[strings.ToLower(host)] {
		return nil, fmt.Errorf("%w: %s is a metadata service", ErrForbiddenAddress, host)
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	ips, err := net.DefaultResolver.LookupNetIP(ctx, "ip", host)
	if err != nil {
		return nil, err
	}
	var lastErr error = fmt.Errorf("%w: %s resolves to no allowed address", ErrForbiddenAddress, host)
	for _, ip := range ips {
		if !g.allowed(ip) {
			continue
		}
		d := net.Dialer{Timeout: timeout}
		c, err := d.DialContext(ctx, "tcp", net.JoinHostPort(ip.Unmap().String(), port))
		if err == nil {
			return c, nil
		}
		lastErr = err
	}
	return nil, lastErr
}
