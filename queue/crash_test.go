package queue

import (
	"bufio"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/heraldhq/herald/internal/kv"
)

// crashChild runs in a child process: it enqueues batches in a loop and prints
// every acknowledged id only after Enqueue returned nil.
func crashChild(dir string, run int) {
	db, err := kv.Open(kv.Options{Dir: dir})
	if err != nil {
		fmt.Println("error", err)
		os.Exit(1)
	}
	s := testSealer(nil)
	q, err := Open(Options{DB: db, Sealer: s, Shards: 4})
	if err != nil {
		fmt.Println("error", err)
		os.Exit(1)
	}
	w := bufio.NewWriter(os.Stdout)
	exp := time.Now().Add(time.Hour)
	for i := 0; ; i++ {
		n := 1 + i%16
		batch := make([]Message, n)
		for j := range batch {
			id := fmt.Sprintf("r%03d-%07d-%02d", run, i, j)
			batch[j] = Message{ID: id, Recipient: fmt.Sprintf("1555000%04d", (i*7+j)%50), Payload: []byte(id), ExpiresAt: exp}
		}
		if err := q.Enqueue(context.Background(), batch); err != nil {
			fmt.Fprintln(w, "error", err)
			w.Flush()
			os.Exit(1)
		}
		for _, m := range batch {
			fmt.Fprintln(w, "ok", m.ID, m.Recipient)
		}
		w.Flush()
	}
}

func TestMain(m *testing.M) {
	if dir := os.Getenv("HERALD_QUEUE_CRASH_DIR"); dir != "" {
		run, _ := strconv.Atoi(os.Getenv("HERALD_QUEUE_CRASH_RUN"))
		crashChild(dir, run)
		return
	}
	os.Exit(m.Run())
}

// TestCrashLosesNoAcknowledgedEnqueue kills an enqueuing child with SIGKILL at
// random moments; after reopening, every id the child saw acknowledged is present
// exactly once, and each recipient's messages are in enqueue order.
func TestCrashLosesNoAcknowledgedEnqueue(t *testing.T) {
	kills := 5
	if v := os.Getenv("HERALD_CRASH_KILLS"); v != "" {
		kills, _ = strconv.Atoi(v)
	}
	if testing.Short() {
		kills = 2
	}
	dir := t.TempDir()
	acked := map[string]string{} // id → recipient
	for run := 0; run < kills; run++ {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), "HERALD_QUEUE_CRASH_DIR="+dir, fmt.Sprintf("HERALD_QUEUE_CRASH_RUN=%d", run))
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		lines := make(chan string, 1024)
		go func() {
			sc := bufio.NewScanner(out)
			for sc.Scan() {
				lines <- sc.Text()
			}
			close(lines)
		}()
		// Wait until the child has acknowledged something, then kill it at a random moment.
		deadline := time.After(time.Duration(20+rand.IntN(200)) * time.Millisecond)
		got := 0
	read:
		for {
			select {
			case l, ok := <-lines:
				if !ok {
					break read
				}
				f := strings.Fields(l)
				if f[0] != "ok" {
					t.Fatalf("child: %s", l)
				}
				acked[f[1]] = f[2]
				got++
			case <-deadline:
				if got > 0 {
					break read
				}
				deadline = time.After(10 * time.Millisecond)
			}
		}
		cmd.Process.Signal(syscall.SIGKILL)
		for l := range lines { // lines printed before the kill were acknowledged too
			if f := strings.Fields(l); f[0] == "ok" {
				acked[f[1]] = f[2]
			}
		}
		cmd.Wait()
	}
	t.Logf("%d children killed with SIGKILL; %d acknowledged messages", kills, len(acked))
	if len(acked) == 0 {
		t.Fatal("nothing was acknowledged before the kills: the test proved nothing")
	}

	e := openEnv(t, dir, nil, newClock(), nil)
	defer e.close()
	e.clock.ns.Store(time.Now().Add(time.Minute).UnixNano())
	seen := map[string]int{}
	for _, l := range leaseAll(t, e.q, 1<<20) {
		prev := ""
		for _, m := range l.Messages {
			seen[m.ID]++
			// The record is the one acknowledged: its payload (the id, as
			// the child wrote it) and its recipient, not only its id.
			if string(m.Payload) != m.ID {
				t.Fatalf("message %s came back with payload %q", m.ID, m.Payload)
			}
			if want, ok := acked[m.ID]; ok && l.Recipient != e.q.RecipientKey(want) {
				t.Fatalf("message %s came back for another recipient than the one acknowledged", m.ID)
			}
			if m.ID <= prev {
				t.Fatalf("recipient order broken: %s after %s", m.ID, prev)
			}
			prev = m.ID
		}
	}
	for id := range acked {
		if seen[id] != 1 {
			t.Fatalf("acknowledged %s found %d times after crash", id, seen[id])
		}
	}
}
