package nodeagent

import "github.com/meshplane/meshplane/bpf"

// setupBPFFS mounts a bpffs at Config.BPFFS when there is none, as
// Cilium's agent does, and then checks that the maps can be used there.
func (a *Agent) setupBPFFS() error {
	mounted, err := bpf.MountFS(a.cfg.BPFFS)
	if err != nil {
		return err
	}
	if mounted {
		a.log.Info("mounted a bpffs", "dir", a.cfg.BPFFS)
	}
	return bpf.CheckSupport(a.cfg.BPFFS)
}
