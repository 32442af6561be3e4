package bench

import (
	"encoding/json"
	"io"
)

func jsonDecoder(r io.Reader) *json.Decoder { return json.NewDecoder(r) }
