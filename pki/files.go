package pki

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// WriteFiles writes p's certificate to certFile (mode 0644: it is
// public) and its key to keyFile (mode 0600), each through WriteFile, so
// a reader sees the old file or the whole new one.
func (p Pair) WriteFiles(certFile, keyFile string) error {
	if err := WriteFile(certFile, p.CertPEM, 0o644); err != nil {
		return err
	}
	return WriteFile(keyFile, p.KeyPEM, 0o600)
}

// WriteFile writes data to path with mode perm atomically: into a
// temporary file beside it, which is given perm (whatever the umask)
// before any byte is written, synced and renamed over path. A key
// therefore never lies on disk with a wider mode, and a crash leaves the
// old file or the new one, never half of one.
func WriteFile(path string, data []byte, perm fs.FileMode) (err error) {
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	// CreateTemp makes the file 0600, so nothing is readable by others
	// before the Chmod.
	f, err := os.CreateTemp(dir, "."+base+".tmp*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer func() {
		if err != nil {
			_ = f.Close()
			_ = os.Remove(f.Name())
			err = fmt.Errorf("write %s: %w", path, err)
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
		return err
	}
	return os.Rename(f.Name(), path)
}
