package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
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
}

type running struct {
	name   string
	cancel context.CancelFunc
	done   chan struct{}
	err    error
}

func newSupervisor(ctx context.Context, log *slog.Logger) *supervisor {
	return &supervisor{parent: ctx, log: log, failed: make(chan struct{})}
}

// start starts c and returns once its Start is done. It fails when Start
// does or when the parent context ended meanwhile (the daemon is stopping).
func (s *supervisor) start(c component) error {
	if c.start == nil && c.run == nil {
		return nil
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
			return fmt.Errorf("%s: %w", c.name, err)
		}
	}
	r := &running{name: c.name, cancel: cancel, done: make(chan struct{})}
	s.running = append(s.running, r)
	if c.run == nil {
		close(r.done)
		return nil
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
	return nil
}

// wait blocks until the parent context ends or a component fails, then
// stops every component and returns what they failed with.
func (s *supervisor) wait() error {
	select {
	case <-s.parent.Done():
	case <-s.failed:
	}
	return s.stop()
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
