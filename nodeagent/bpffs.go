package nodeagent

import "github.com/meshplane/meshplane/bpf"

// setupBPFFS mounts a bpffs at Config.BPF.Dir when there is none, as
// Cilium's agent does, and then checks that the maps can be used there.
func (a *Agent) setupBPFFS() error {
	mounted, err := bpf.MountFS(a.cfg.BPF.Dir)
	if err != nil {
		return err
	}
	if mounted {
		a.log.Info("mounted a bpffs", "dir", a.cfg.BPF.Dir)
	}
	return bpf.CheckSupport(a.cfg.BPF.Dir)
}
