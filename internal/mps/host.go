package mps

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// HostError says why MPS sharing cannot work in this container: the
// control daemons and the workload pods must meet in host folders, and the
// control binary must be there to start. It is a setup problem no restart
// fixes, so `gpulet run` reports it and waits instead of crash-looping.
type HostError struct {
	Problems []string
}

func (e *HostError) Error() string {
	return "sharing.mps cannot work in this container: " + strings.Join(e.Problems, "; ") +
		" (deploy/ and the chart ship no MPS setup: use time-slicing, or mount these as NVIDIA's MPS control daemon does)"
}

// DefaultMountInfo is the mount table CheckHost reads.
const DefaultMountInfo = "/proc/self/mountinfo"

// CheckHost checks what the control daemons need from the host before any
// is started: the control binary (control, looked up in $PATH), root on a
// mount of its own (a host folder, not gpulet's container filesystem,
// where the pipe folders would be invisible to the workload pods), and
// gpulet's /dev/shm being root's shm folder (clients and server meet
// there). mountinfo is the mount table ("" for DefaultMountInfo), shm
// gpulet's /dev/shm ("" for /dev/shm).
func CheckHost(root, control, mountinfo, shm string) error {
	if mountinfo == "" {
		mountinfo = DefaultMountInfo
	}
	if shm == "" {
		shm = "/dev/shm"
	}
	if control == "" {
		control = DefaultControl
	}
	var problems []string
	if _, err := exec.LookPath(control); err != nil {
		problems = append(problems, fmt.Sprintf("the control binary %s is not here (%v): mount the driver's nvidia-cuda-mps-control and set --mps-control", control, err))
	}
	mp, err := mountPointOf(root, mountinfo)
	switch {
	case err != nil:
		problems = append(problems, fmt.Sprintf("cannot tell where the MPS root %s is mounted from: %v", root, err))
	case mp == "/":
		problems = append(problems, fmt.Sprintf("the MPS root %s is in gpulet's own container filesystem: mount the host's %s there", root, root))
	}
	rootShm, errRoot := os.Stat(filepath.Join(root, "shm"))
	devShm, errShm := os.Stat(shm)
	if errRoot != nil || errShm != nil || !os.SameFile(rootShm, devShm) {
		problems = append(problems, fmt.Sprintf("%s is not %s: mount the host's %s at %s", shm, filepath.Join(root, "shm"), filepath.Join(root, "shm"), shm))
	}
	if len(problems) > 0 {
		return &HostError{Problems: problems}
	}
	return nil
}

// mountPointOf is the mount point, in mountinfo, that path lives under
// (the longest mount point that is path or one of its parents).
func mountPointOf(path, mountinfo string) (string, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return "", err
	}
	if r, err := filepath.EvalSymlinks(abs); err == nil {
		abs = r
	}
	f, err := os.Open(mountinfo)
	if err != nil {
		return "", err
	}
	defer f.Close()
	best := ""
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		mp := unescapeMount(fields[4])
		if (abs == mp || mp == "/" || strings.HasPrefix(abs, mp+"/")) && len(mp) > len(best) {
			best = mp
		}
	}
	if err := sc.Err(); err != nil {
		return "", err
	}
	if best == "" {
		return "", errors.New("no mount holds it")
	}
	return best, nil
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space, ...).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			var v int
			if _, err := fmt.Sscanf(s[i+1:i+4], "%03o", &v); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
