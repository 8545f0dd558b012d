package validate

import (
	"encoding/json"
	"fmt"
	"io"
	"text/tabwriter"
)

// WriteJSON prints the report as indented JSON.
func WriteJSON(w io.Writer, r *Report) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

// WriteTable prints the report for a person: what CUDA sees under this
// environment, then one row per GPU.
func WriteTable(w io.Writer, r *Report) error {
	lib := r.Library
	if lib == "" {
		lib = "not loaded"
	}
	ver := r.DriverVersion
	if ver == "" {
		ver = "-"
	}
	fmt.Fprintf(w, "CUDA driver:  %s (%s)\n", ver, lib)
	fmt.Fprintf(w, "Environment:  %s\n", r.Env.Note)
	count := "unknown (CUDA did not start)"
	if r.DeviceCount != nil {
		count = fmt.Sprintf("%d", *r.DeviceCount)
	}
	fmt.Fprintf(w, "CUDA devices: %s visible under this environment", count)
	if r.Env.Expected != nil {
		fmt.Fprintf(w, " (expected exactly %d)", len(r.Env.Expected))
	}
	fmt.Fprintln(w)
	if r.Error != "" {
		fmt.Fprintf(w, "\nFAIL: %s\n", r.Error)
		return nil
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "INDEX\tUUID\tNAME\tCC\tMEMORY\tKERNEL\tCOPY\tH2D GB/s\tD2H GB/s\tD2D GB/s\tRESULT")
	pageable := false
	for _, d := range r.Devices {
		result := "PASS"
		if !d.Pass {
			result = "FAIL"
		}
		host := ""
		if d.CopyOK && !d.Pinned {
			host, pageable = "*", true
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", d.Ordinal, orDash(d.UUID), orDash(d.Name),
			orDash(d.ComputeCapability), mib(d.MemoryBytes), kernelWord(d), okWord(d.CopyOK),
			rate(d.H2DGBps, d.CopyOK)+host, rate(d.D2HGBps, d.CopyOK)+host, rate(d.D2DGBps, d.CopyOK), result)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if pageable {
		fmt.Fprintln(w, "* host memory could not be pinned: host copies ran from pageable memory, slower than the link allows")
	}
	passed := 0
	for _, d := range r.Devices {
		if d.Pass {
			passed++
		} else {
			fmt.Fprintf(w, "GPU %d: %s\n", d.Ordinal, d.Error)
		}
	}
	if r.Visibility != "" {
		fmt.Fprintf(w, "Visibility: %s\n", r.Visibility)
	}
	verdict := "PASS"
	if !r.Pass {
		verdict = "FAIL"
	}
	fmt.Fprintf(w, "\n%s: %d of %d GPUs passed\n", verdict, passed, len(r.Devices))
	return nil
}

func okWord(ok bool) string {
	if ok {
		return "ok"
	}
	return "FAIL"
}

// kernelWord says when the kernel needed the device's own PTX target.
func kernelWord(d DeviceResult) string {
	if d.KernelOK && d.PTXTarget != "" && d.PTXTarget != "sm_50" {
		return "ok (" + d.PTXTarget + " PTX)"
	}
	return okWord(d.KernelOK)
}

func rate(v float64, measured bool) string {
	if !measured || v <= 0 {
		return "-"
	}
	return fmt.Sprintf("%.1f", v)
}

func mib(b uint64) string {
	if b == 0 {
		return "-"
	}
	return fmt.Sprintf("%d MiB", b>>20)
}
