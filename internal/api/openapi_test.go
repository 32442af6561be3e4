package api_test

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/gorillamux"

	"github.com/heraldhq/herald/internal/api"
)

var spec struct {
	once   sync.Once
	doc    *openapi3.T
	router routers.Router
	err    error

	mu        sync.Mutex
	exercised map[string]bool // operationId → a test got a 2xx from it
}

// TestMain checks, after a run of the whole package, that the tests got a
// 2xx from every operation the description has: an operation no test
// calls is one whose description nothing checks.
func TestMain(m *testing.M) {
	spec.exercised = map[string]bool{}
	code := m.Run()
	if f := flag.Lookup("test.run"); code == 0 && f != nil && f.Value.String() == "" && !testing.Short() {
		doc, _, err := loadSpec()
		if err != nil {
			fmt.Println("openapi.json:", err)
			os.Exit(1)
		}
		for path, item := range doc.Paths.Map() {
			for method, op := range item.Operations() {
				if !spec.exercised[op.OperationID] {
					fmt.Printf("openapi: no test got a 2xx from %s %s (%s)\n", method, path, op.OperationID)
					code = 1
				}
			}
		}
	}
	os.Exit(code)
}

// loadSpec reads the served description once: it must be valid OpenAPI 3.1.
func loadSpec() (*openapi3.T, routers.Router, error) {
	spec.once.Do(func() {
		openapi3filter.RegisterBodyDecoder("application/x-ndjson", openapi3filter.FileBodyDecoder)
		l := openapi3.NewLoader()
		if spec.doc, spec.err = l.LoadFromData(api.OpenAPI); spec.err != nil {
			return
		}
		if spec.err = spec.doc.Validate(l.Context); spec.err != nil {
			return
		}
		spec.doc.Servers = nil // match any host: the tests' servers listen on ephemeral ports
		spec.router, spec.err = gorillamux.NewRouter(spec.doc)
	})
	return spec.doc, spec.router, spec.err
}

// outsideSpec are paths the API serves that are not the business or admin
// API (probes, metrics, the platform's events, the description itself).
var outsideSpec = []string{"/healthz", "/readyz", "/metrics", "/v1/platform/events", "/v1/platform/inbound", "/openapi.json"}

// checkSpec validates one exchange against the OpenAPI description: every
// answer must be one it documents (status and body); a request Herald
// accepted (2xx) must be one it allows. A request Herald refused may break
// the description (that is often why it was refused). A path it does not
// describe must be one of outsideSpec or answered 404/405 with an error
// object.
func checkSpec(t *testing.T, req *http.Request, reqBody []byte, status int, header http.Header, respBody []byte) {
	t.Helper()
	doc, router, err := loadSpec()
	if err != nil {
		t.Fatalf("openapi.json: %v", err)
	}
	r := req.Clone(context.Background())
	r.Body = io.NopCloser(bytes.NewReader(reqBody))
	route, params, err := router.FindRoute(r)
	if err != nil {
		for _, p := range outsideSpec {
			if r.URL.Path == p {
				return
			}
		}
		if status != 404 && status != 405 {
			t.Errorf("openapi: %s %s answered %d is not in the description: %v", r.Method, r.URL.Path, status, err)
			return
		}
		if err := doc.Components.Schemas["Error"].Value.VisitJSON(decodeAny(respBody)); err != nil {
			t.Errorf("openapi: %s %s %d: not an error object: %v", r.Method, r.URL.Path, status, err)
		}
		return
	}
	in := &openapi3filter.RequestValidationInput{Request: r, PathParams: params, Route: route,
		Options: &openapi3filter.Options{AuthenticationFunc: openapi3filter.NoopAuthenticationFunc, MultiError: true}}
	if status >= 200 && status < 300 {
		spec.mu.Lock()
		spec.exercised[route.Operation.OperationID] = true
		spec.mu.Unlock()
		if err := openapi3filter.ValidateRequest(context.Background(), in); err != nil {
			t.Errorf("openapi: Herald accepted (%d) a request its description refuses: %s %s %.300s\n%v", status, r.Method, r.URL.Path, reqBody, err)
		}
	}
	out := &openapi3filter.ResponseValidationInput{RequestValidationInput: in, Status: status, Header: header,
		Options: &openapi3filter.Options{IncludeResponseStatus: true, MultiError: true}}
	out.SetBodyBytes(respBody)
	if err := openapi3filter.ValidateResponse(context.Background(), out); err != nil {
		t.Errorf("openapi: the answer to %s %s is not what the description says: %d %.500s\n%v", r.Method, r.URL.Path, status, respBody, err)
	}
	if header.Get(api.TraceHeader) == "" {
		t.Errorf("openapi: %s %s: no %s", r.Method, r.URL.Path, api.TraceHeader)
	}
}

func decodeAny(b []byte) any {
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		return string(b)
	}
	return v
}

// TestOpenAPIIsServedAndValid: GET /openapi.json answers the description,
// and it is a valid OpenAPI 3.1 document describing every route.
func TestOpenAPIIsServedAndValid(t *testing.T) {
	e := start(t)
	resp, err := http.Get(e.base + "/openapi.json")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !bytes.Equal(body, api.OpenAPI) || !strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
		t.Fatalf("%d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	doc, _, err := loadSpec()
	if err != nil {
		t.Fatal(err)
	}
	if !doc.IsOpenAPI31OrLater() {
		t.Fatalf("openapi %s, want 3.1", doc.OpenAPI)
	}
	for _, p := range []string{"/v1/{phone_number_id}/messages", "/v1/{phone_number_id}/campaigns", "/v1/campaigns/{campaign_id}",
		"/v1/messages/{message_id}", "/v1/{phone_number_id}/webhook", "/v1/{phone_number_id}/integrity", "/admin/v1/businesses",
		"/admin/v1/businesses/{business_id}", "/admin/v1/businesses/{business_id}/tokens", "/admin/v1/businesses/{business_id}/tokens/{token_id}",
		"/admin/v1/businesses/{business_id}/phone_numbers"} {
		if doc.Paths.Find(p) == nil {
			t.Errorf("%s is not described", p)
		}
	}
}
