// Package waittest is how tests wait for a condition that real I/O makes
// true (a socket, a file, an HTTP answer, another goroutine's write):
// bounded polling that fails with what was last seen. Time-driven code
// (debounce, backoff, quiet periods) is better tested in a testing/synctest
// bubble, where nothing waits for real.
package waittest

import (
	"testing"
	"time"
)

// Every is how often conditions are polled.
const Every = 5 * time.Millisecond

// Until polls cond until it holds, and fails t when it has not within d.
func Until(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	UntilSays(t, d, what, func() (bool, string) { return cond(), "" })
}

// UntilSays is Until with a condition that also says what it saw, for the
// failure message.
func UntilSays(t testing.TB, d time.Duration, what string, cond func() (ok bool, saw string)) {
	t.Helper()
	deadline := time.Now().Add(d)
	tick := time.NewTicker(Every)
	defer tick.Stop()
	for {
		ok, saw := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			if saw != "" {
				t.Fatalf("%s: not within %v; last saw: %s", what, d, saw)
			}
			t.Fatalf("%s: not within %v", what, d)
		}
		<-tick.C
	}
}
