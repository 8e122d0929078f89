package nodeagent

import (
	"fmt"
	"os"
	"path/filepath"
)

// writeFileAtomic replaces path with data: it writes a temporary file in
// the same directory, syncs it and renames it over path, so a reader sees
// the old content or the new, never a part. On any failure the temporary
// file is removed: a failed write leaves nothing behind.
func writeFileAtomic(path string, data []byte, perm os.FileMode) error {
	return writeFileAtomicThen(path, data, perm, nil)
}

// writeFileAtomicThen is writeFileAtomic with a hook called between the
// temporary file's sync and the rename (the crash test's kill point).
func writeFileAtomicThen(path string, data []byte, perm os.FileMode, beforeRename func()) (err error) {
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
	if err := os.Rename(f.Name(), path); err != nil {
		_ = os.Remove(f.Name())
		return err
	}
	return nil
}
