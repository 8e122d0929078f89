package nodeagent

import (
	"os"

	"github.com/meshplane/meshplane/internal/atomicfile"
)

// writeFileAtomic replaces path with data (atomicfile.Write): a reader
// sees the old content or the new, never a part, and a failed write
// leaves nothing behind.
func writeFileAtomic(path string, data []byte, perm os.FileMode) error {
	return atomicfile.Write(path, data, perm)
}

// writeFileAtomicThen is writeFileAtomic with a hook called between the
// temporary file's sync and the rename (the crash test's kill point).
func writeFileAtomicThen(path string, data []byte, perm os.FileMode, beforeRename func()) error {
	return atomicfile.WriteThen(path, data, perm, beforeRename)
}
