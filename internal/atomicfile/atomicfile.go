// Package atomicfile replaces a file's content atomically: a reader sees
// the old content or the new, never a part, and a failed write leaves
// nothing behind. The agent's state files and pki's keys and certificates
// are written through it. Standard library only (pki links nothing else).
package atomicfile

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// Write replaces path with data, with mode perm.
func Write(path string, data []byte, perm fs.FileMode) error {
	return WriteThen(path, data, perm, nil)
}

// WriteThen is Write with a hook called between the temporary file's sync
// and the rename (a crash test's kill point).
//
// The temporary file, ".<name>.<random>.tmp" beside path, is created with
// mode 0600 and given perm before any byte is written (so a key never lies
// on disk with a wider mode, whatever the umask), synced, and renamed over
// path. On any failure it is removed.
func WriteThen(path string, data []byte, perm fs.FileMode, beforeRename func()) (err error) {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*.tmp")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			_ = f.Close()
			_ = os.Remove(f.Name())
		}
	}()
	if err := f.Chmod(perm); err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("close %s: %w", f.Name(), err)
	}
	if beforeRename != nil {
		beforeRename()
	}
	return os.Rename(f.Name(), path)
}
