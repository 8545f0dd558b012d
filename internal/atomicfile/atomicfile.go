// Package atomicfile replaces a file in one rename, so a reader polling it
// (a container runtime's CDI folder, NFD's features.d, a test script, the
// daemon after a crash) sees the old content or the new, never half of it.
package atomicfile

import (
	"fmt"
	"os"
	"path/filepath"
)

// Write replaces path with data and mode perm: a temporary file beside it,
// synced to disk, renamed over path, then the folder synced (best effort:
// not every filesystem syncs folders). The folder must exist. On error path
// is left as it was and no temporary file remains.
func Write(path string, data []byte, perm os.FileMode) error {
	return WriteChecked(path, data, perm, nil)
}

// WriteChecked is Write with check run on the temporary file (its path)
// before the rename: an error from it leaves path as it was, and no
// temporary file. The temporary name starts with a dot and ends in digits,
// so folder scanners that look for an extension (a CDI cache) skip it.
func WriteChecked(path string, data []byte, perm os.FileMode, check func(tmp string) error) error {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer os.Remove(tmp.Name()) // no-op after the rename
	_, err = tmp.Write(data)
	if err == nil {
		err = tmp.Chmod(perm)
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil && check != nil {
		err = check(tmp.Name())
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
	return nil
}
