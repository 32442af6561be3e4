package api

import (
	_ "embed"

	"github.com/valyala/fasthttp"
)

// OpenAPI is the OpenAPI 3.1 description of the business and admin APIs,
// served at GET /openapi.json. The API tests validate every request they
// make and every answer they get against it, so it cannot drift.
//
//go:embed openapi.json
var OpenAPI []byte

func (s *Server) openapi(ctx *fasthttp.RequestCtx) {
	ctx.SetContentType("application/json")
	ctx.SetBody(OpenAPI)
}
