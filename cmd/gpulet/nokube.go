//go:build nokube

package main

import (
	"errors"

	"github.com/spf13/cobra"

	"github.com/gpulet/gpulet/internal/config"
)

// A gpulet built with the nokube tag (make build-lean) has no Kubernetes
// API client: `labels --remove` and `dra` need the full gpulet.
var errNoKube = errors.New("this gpulet is built without the Kubernetes API (make build-lean, tag nokube); use the full gpulet")

func newDRACmd() *cobra.Command {
	return &cobra.Command{Use: "dra", Short: "Dynamic Resource Allocation (not in this build)", Hidden: true,
		RunE: func(*cobra.Command, []string) error { return errNoKube }}
}

func removeLabels(*cobra.Command, *config.Config, string) error { return errNoKube }

func removeLabelsEverywhere(*cobra.Command, *config.Config, string) error { return errNoKube }
