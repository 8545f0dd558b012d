//go:build !linux

package main

import "time"

// threadCPU is unavailable off Linux; the CPU columns then read n/a.
func threadCPU() time.Duration { return 0 }
