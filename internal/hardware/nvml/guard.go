//go:build cgo && linux

package nvml

import (
	"errors"
	"fmt"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
)

// CallTimeout bounds one NVML call.
var CallTimeout = 5 * time.Second

// errWedged is wrapped by every error caused by an NVML call that outlived
// CallTimeout, and by the errors of calls refused while one has not returned.
var errWedged = errors.New("the NVIDIA driver is not responding")

type stuckCall struct {
	what  string
	since time.Time
}

// wedged says why calls are refused now: an earlier call never returned.
func (b *Backend) wedged(what string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	var oldest stuckCall
	for _, s := range b.stuck {
		if oldest.what == "" || s.since.Before(oldest.since) {
			oldest = s
		}
	}
	if oldest.what == "" {
		return nil
	}
	return fmt.Errorf("NVML %s skipped: NVML %s has not returned for %s (%w)",
		what, oldest.what, time.Since(oldest.since).Round(time.Millisecond), errWedged)
}

// markStuck records a call that outlived its deadline; the returned func
// forgets it once the call returns.
func (b *Backend) markStuck(what string, since time.Time) func() {
	b.mu.Lock()
	b.stuckID++
	id := b.stuckID
	b.stuck[id] = stuckCall{what, since}
	b.mu.Unlock()
	return func() {
		b.mu.Lock()
		delete(b.stuck, id)
		b.mu.Unlock()
	}
}

// call runs f under CallTimeout. A call that never returns leaves its
// goroutine behind (NVML cannot be interrupted) and makes later calls fail
// fast instead of piling up, until it returns.
func call[T any](b *Backend, what string, f func() (T, nvml.Return)) (T, error) {
	var zero T
	if err := b.wedged(what); err != nil {
		return zero, err
	}
	type result struct {
		v   T
		ret nvml.Return
	}
	timeout := CallTimeout
	start := time.Now()
	done := make(chan result, 1)
	go func() {
		v, ret := f()
		done <- result{v, ret}
	}()
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case r := <-done:
		b.observeCall(what, time.Since(start), false)
		if r.ret != nvml.SUCCESS {
			return zero, nvmlError{what, r.ret}
		}
		return r.v, nil
	case <-t.C:
		b.observeCall(what, timeout, true)
		forget := b.markStuck(what, start)
		go func() {
			<-done
			forget()
		}()
		return zero, fmt.Errorf("NVML %s did not return within %s (%w)", what, timeout, errWedged)
	}
}

// do is call for NVML functions that return only a status.
func (b *Backend) do(what string, f func() nvml.Return) error {
	_, err := call(b, what, func() (struct{}, nvml.Return) { return struct{}{}, f() })
	return err
}

type nvmlError struct {
	what string
	ret  nvml.Return
}

func (e nvmlError) Error() string { return fmt.Sprintf("NVML %s: %s", e.what, nvml.ErrorString(e.ret)) }

// unsupported reports an NVML answer that means "this device or driver
// cannot tell", as opposed to a failure.
func unsupported(err error) bool {
	var ne nvmlError
	return errors.As(err, &ne) && (ne.ret == nvml.ERROR_NOT_SUPPORTED || ne.ret == nvml.ERROR_FUNCTION_NOT_FOUND || ne.ret == nvml.ERROR_INVALID_ARGUMENT)
}

func isReturn(err error, ret nvml.Return) bool {
	var ne nvmlError
	return errors.As(err, &ne) && ne.ret == ret
}

// hung keeps only the errors of a wedged driver: optional queries ignore
// every other failure, but must not hide a call that never returned.
func hung(err error) error {
	if errors.Is(err, errWedged) {
		return err
	}
	return nil
}
