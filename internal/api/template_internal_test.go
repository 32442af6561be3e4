package api

import (
	"runtime"
	"strings"
	"testing"
)

// TestFillTemplateStopsAtTheLimit: expansion stops as soon as the text passes
// the body limit, so what it allocates is bounded by the limit, not by
// placeholders × value (819 × 100 KB would be 82 MB).
func TestFillTemplateStopsAtTheLimit(t *testing.T) {
	tpl := strings.Repeat("{{a}}", 819)
	vars := map[string]string{"a": strings.Repeat("x", 100<<10)}
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	_, e := fillTemplate(tpl, vars)
	runtime.ReadMemStats(&after)
	if e == nil || !strings.Contains(e.msg, "expands to more than") {
		t.Fatalf("want the expansion refused, got %v", e)
	}
	if grew := after.TotalAlloc - before.TotalAlloc; grew > 1<<20 {
		t.Fatalf("the refused expansion allocated %d KB", grew>>10)
	}
	if got, e := fillTemplate("Hi {{a}}!", map[string]string{"a": "Ana"}); e != nil || got != "Hi Ana!" {
		t.Fatalf("a normal expansion: %q %v", got, e)
	}
}
