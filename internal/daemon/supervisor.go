package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
)

// A component is one long-running part of gpulet. Start, when set, runs
// before the next component starts (a spec written, a port bound, daemons
// up): what later components rely on is ready when they start. Run, when
// set, serves until its context ends and then releases what Start and Run
// took. Both get the component's own context, which ends when the
// component is stopped. A component with neither is off.
type component struct {
	name  string
	start func(ctx context.Context) error
	run   func(ctx context.Context) error
}

// supervisor starts components one after another, in the order given, and
// stops them in the reverse order: a component stops only after every
// component started after it (which may use it) has returned. The first
// component to fail stops them all.
type supervisor struct {
	parent  context.Context
	log     *slog.Logger
	failed  chan struct{}
	once    sync.Once
	running []*running
	// calls are run by wait, between starts and stops (do).
	calls chan func()
}

type running struct {
	name   string
	cancel context.CancelFunc
	done   chan struct{}
	err    error
}

func newSupervisor(ctx context.Context, log *slog.Logger) *supervisor {
	return &supervisor{parent: ctx, log: log, failed: make(chan struct{}), calls: make(chan func())}
}

// start starts c and returns once its Start is done. It fails when Start
// does or when the parent context ended meanwhile (the daemon is stopping).
func (s *supervisor) start(c component) error {
	r, err := s.launch(c)
	if r != nil {
		s.running = append(s.running, r)
	}
	return err
}

// launch starts c and returns it running (nil when c is off or failed).
func (s *supervisor) launch(c component) (*running, error) {
	if c.start == nil && c.run == nil {
		return nil, nil
	}
	// The component's context does not end with the parent: stop ends them
	// one by one, in reverse order. While Start runs, the parent's end does
	// end it (a wait for the driver must not outlive the daemon).
	ctx, cancel := context.WithCancel(context.WithoutCancel(s.parent))
	if c.start != nil {
		detach := context.AfterFunc(s.parent, cancel)
		err := c.start(ctx)
		detach()
		if err == nil {
			err = s.parent.Err()
		}
		if err != nil {
			cancel()
			return nil, fmt.Errorf("%s: %w", c.name, err)
		}
	}
	r := &running{name: c.name, cancel: cancel, done: make(chan struct{})}
	if c.run == nil {
		close(r.done)
		return r, nil
	}
	go func() {
		defer close(r.done)
		err := c.run(ctx)
		if ctx.Err() != nil && errors.Is(err, context.Canceled) {
			err = nil // stopped, as asked
		}
		if err != nil {
			r.err = err
			s.log.Error("component failed; stopping gpulet", "component", c.name, "err", err)
			s.once.Do(func() { close(s.failed) })
		}
	}()
	return r, nil
}

// restart stops the running components named in names, in reverse start
// order, while the others keep running; then rebuild (which may change what
// components are made from) lists every component again, and those of
// names are started in order, in their places among the others. A
// component of names that was off and is now on starts; one now off stays
// stopped. It returns the first start that failed: the components of names
// after it are not started.
func (s *supervisor) restart(names map[string]bool, rebuild func() []component) error {
	kept := map[string]*running{}
	var errs []error
	for i := len(s.running) - 1; i >= 0; i-- {
		r := s.running[i]
		if !names[r.name] {
			kept[r.name] = r
			continue
		}
		r.cancel()
		<-r.done
		if r.err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", r.name, r.err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return err // one had failed already: the supervisor is stopping gpulet
	}
	old := s.running
	var next []*running
	var failed error
	for _, c := range rebuild() {
		if !names[c.name] {
			if r := kept[c.name]; r != nil {
				next = append(next, r)
				delete(kept, c.name)
			}
			continue
		}
		if failed != nil {
			continue
		}
		r, err := s.launch(c)
		if err != nil {
			failed = err
			continue
		}
		if r != nil {
			next = append(next, r)
		}
	}
	// A component not named keeps running even if rebuild no longer lists
	// it: it goes back after the one it followed.
	for i, r := range old {
		if kept[r.name] != r {
			continue
		}
		at := 0
		for j := i - 1; j >= 0; j-- {
			if k := slices.Index(next, old[j]); k >= 0 {
				at = k + 1
				break
			}
		}
		next = slices.Insert(next, at, r)
	}
	s.running = next
	return failed
}

// do runs f in wait's goroutine, between starts and stops, and returns once
// it has run; it returns ctx's error instead when ctx ends first (gpulet
// stopping).
func (s *supervisor) do(ctx context.Context, f func()) error {
	done := make(chan struct{})
	select {
	case s.calls <- func() { defer close(done); f() }:
	case <-ctx.Done():
		return ctx.Err()
	}
	<-done
	return nil
}

// wait blocks until the parent context ends or a component fails, running
// do's calls meanwhile, then stops every component and returns what they
// failed with.
func (s *supervisor) wait() error {
	for {
		select {
		case <-s.parent.Done():
			return s.stop()
		case <-s.failed:
			return s.stop()
		case f := <-s.calls:
			f()
		}
	}
}

// stop ends the components in the reverse of their start order, each after
// the ones started later have returned, and joins their errors.
func (s *supervisor) stop() error {
	var errs []error
	for i := len(s.running) - 1; i >= 0; i-- {
		r := s.running[i]
		r.cancel()
		<-r.done
		if r.err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", r.name, r.err))
		}
	}
	s.running = nil
	return errors.Join(errs...)
}
