package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"github.com/gpulet/gpulet/internal/atomicfile"
	"io"
	"net/http"
	"time"
)

// scrapeCmd GETs a URL (gpulet's /metrics) and prints the body, for GPU
// machines without curl. With --wait it retries until the server answers.
func scrapeCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("scrape", flag.ContinueOnError)
	fs.SetOutput(stderr)
	out := fs.String("out", "", "write the body here instead of stdout")
	wait := fs.Duration("wait", 0, "retry until the server answers 200, for up to this long")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return errors.New("scrape needs one URL")
	}
	url := fs.Arg(0)
	deadline := time.Now().Add(*wait)
	for {
		body, err := get(ctx, url)
		if err == nil {
			if *out != "" {
				return atomicfile.Write(*out, body, 0o644)
			}
			_, err = stdout.Write(body)
			return err
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func get(ctx context.Context, url string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return body, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return body, nil
}
