package main

import (
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

// BenchmarkDaemonStartToRegistration measures how long `gpulet run` takes
// from exec to its registration reaching the kubelet (dgx-h100 simulated).
func BenchmarkDaemonStartToRegistration(b *testing.B) {
	var total time.Duration
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		start := time.Now()
		b.StartTimer()
		d := startDaemon(b, "dgx-h100")
		if _, err := d.kubelet.WaitRegistration(20 * time.Second); err != nil {
			b.Fatal(err)
		}
		total += time.Since(start)
		b.StopTimer()
		d.cmd.Process.Kill()
		d.cmd.Wait()
		b.StartTimer()
	}
	b.ReportMetric(float64(total.Microseconds())/float64(b.N)/1000, "ms/registration")
}

// BenchmarkDaemonIdleRSS reports the resident memory of a registered,
// idle `gpulet run` serving the dgx-h100 node (after 2 s of idling).
func BenchmarkDaemonIdleRSS(b *testing.B) {
	var rss, hwm float64
	for i := 0; i < b.N; i++ {
		d := startDaemon(b, "dgx-h100")
		if _, err := d.kubelet.WaitRegistration(20 * time.Second); err != nil {
			b.Fatal(err)
		}
		time.Sleep(2 * time.Second)
		rss = procStatusMB(b, d.cmd.Process.Pid, "VmRSS")
		hwm = procStatusMB(b, d.cmd.Process.Pid, "VmHWM")
		d.cmd.Process.Kill()
		d.cmd.Wait()
	}
	b.ReportMetric(rss, "MB-RSS")
	b.ReportMetric(hwm, "MB-peak-RSS")
}

func procStatusMB(b *testing.B, pid int, field string) float64 {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if strings.HasPrefix(line, field+":") {
			kb, _ := strconv.ParseFloat(strings.Fields(line)[1], 64)
			return kb / 1024
		}
	}
	b.Fatalf("no %s in /proc/%d/status", field, pid)
	return 0
}
