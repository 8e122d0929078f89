package pki

import (
	"fmt"
	"io/fs"

	"github.com/meshplane/meshplane/internal/atomicfile"
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
func WriteFile(path string, data []byte, perm fs.FileMode) error {
	if err := atomicfile.Write(path, data, perm); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
