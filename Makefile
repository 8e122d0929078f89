# meshplane: thin targets; the README names them.
GO            ?= go
BIN           := bin
GOLANGCI_LINT_VERSION := v2.15.0
# Fuzz time per target in `make fuzz`.
FUZZTIME      ?= 20s

.PHONY: all build demo test bench lint fuzz generate clean kube-apiserver kube-node netpol-e2e

all: build

# Static binaries (no libc, no dynamic loader): they run in the distroless
# image, and mesh-cni, exec'd for every pod, starts faster.
build:
	CGO_ENABLED=0 $(GO) build -o $(BIN)/ ./cmd/...

## demo: build the binaries and run the lab demo (root): namespaces, agents, eBPF, real probes.
demo: build
	$(BIN)/meshctl demo

## kube-apiserver: build the kube-apiserver the tests run (package kubetest)
## from the Go module proxy into ${MESHPLANE_CACHE:-$HOME/.cache/meshplane};
## a binary already there is kept (the first build takes minutes).
kube-apiserver:
	tools/kubernetes/build.sh kube-apiserver

## kube-node: build what a real node (package kubenode) runs besides
## Debian's containerd, runc and etcd: kubelet, kube-apiserver,
## kube-controller-manager, kube-scheduler and kubectl, and the upstream e2e
## suite (e2e.test) with agnhost for the NetworkPolicy run, into the same cache
## (the first build takes about 15 minutes on 2 cores; see docs/development.md).
kube-node:
	nice -n 5 tools/kubernetes/build.sh node e2e.test agnhost

## test: formatting, vet, the race-enabled test suite (real etcd, a real
## kube-apiserver, a real node), the e2e suite again with native routing
## (the first run tunnels), and every benchmark once so they keep compiling.
test: kube-apiserver kube-node
	@bad=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	  if [ -n "$$bad" ]; then echo "not gofmt-ed:"; echo "$$bad"; exit 1; fi
	$(GO) vet ./...
	$(GO) test -race -count=1 -timeout 20m ./...
	MESHPLANE_ROUTING_MODE=native $(GO) test -race -count=1 -timeout 20m ./e2e/
	$(GO) test -run '^$$' -bench . -benchtime=1x -timeout 10m ./...

## netpol-e2e: the whole upstream Kubernetes NetworkPolicy e2e suite on
## meshplane on a real node (about an hour; make test runs 8 of its specs).
netpol-e2e: build kube-node
	MESHPLANE_NETPOL_FOCUS=all MESHPLANE_LAB_BIN=$(CURDIR)/$(BIN) $(GO) test -count=1 -timeout 90m -v -run TestUpstreamNetworkPolicy ./e2e/realnode/

## bench: the benchmarks recorded in docs/benchmarks.md.
bench: build kube-apiserver
	$(GO) test -run '^$$' -bench . -benchmem ./kvstore/allocator/ ./labels/ ./ipam/podip/
	$(BIN)/meshctl bench identity --agents 32 --labelsets 200 --state-dir $$(mktemp -d)
	$(BIN)/meshctl bench identity --agents 32 --labelsets 200 --shared --state-dir $$(mktemp -d)
	$(BIN)/meshctl bench ipam --nodes 5000 --pods 100 --state-dir $$(mktemp -d)
	$(GO) test -run '^$$' -bench . -benchmem ./bpf/ ./nodeagent/reconciler/
	$(BIN)/meshctl bench cni --pods 100 --parallel 10
	$(GO) test -run '^$$' -bench . -benchtime 10x ./controlplane/
	$(BIN)/meshctl bench propagation --agents 50 --entries 1000 --state-dir $$(mktemp -d)
	$(BIN)/meshctl bench propagation --agents 1 --entries 100000 --state-dir $$(mktemp -d)
	$(BIN)/meshctl bench gossip --members 50
	$(BIN)/meshctl bench datapath --rounds 3
	$(BIN)/meshctl bench health --nodes 3,2 --duration 3m --crashes 20 --pauses 5 --restarts 10
	$(BIN)/meshctl bench controlplane --pods 1000
	$(BIN)/meshctl bench controlplane --pods 10000

lint:
	@command -v golangci-lint >/dev/null || $(GO) install github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$(GOLANGCI_LINT_VERSION)
	PATH="$$PATH:$$($(GO) env GOPATH)/bin" golangci-lint run ./...

fuzz:
	.ci/fuzz-target ./labels/ 'FuzzParseSet' $(FUZZTIME)
	.ci/fuzz-target ./cni/ 'FuzzParseConf' $(FUZZTIME)
	.ci/fuzz-target ./cni/ 'FuzzParseArgs' $(FUZZTIME)
	.ci/fuzz-target ./labels/ 'FuzzParse$$' $(FUZZTIME)
	.ci/fuzz-target ./kvstore/allocator/ 'FuzzDecodeIdentity' $(FUZZTIME)
	.ci/fuzz-target ./ipam/ 'FuzzPool' $(FUZZTIME)
	.ci/fuzz-target ./kvstore/nodecidr/ 'FuzzDecodeClaim' $(FUZZTIME)
	.ci/fuzz-target ./ipam/podip/ 'FuzzJournalLoad' $(FUZZTIME)
	.ci/fuzz-target ./node/ 'FuzzDecode$$' $(FUZZTIME)
	.ci/fuzz-target ./service/ 'FuzzDecode$$' $(FUZZTIME)
	.ci/fuzz-target ./ipcache/ 'FuzzDecode$$' $(FUZZTIME)
	.ci/fuzz-target ./bpf/ 'FuzzPortRange' $(FUZZTIME)
	.ci/fuzz-target ./bpf/ 'FuzzIPCacheKey' $(FUZZTIME)
	.ci/fuzz-target ./health/ 'FuzzDecodeMeta' $(FUZZTIME)
	.ci/fuzz-target ./policy/ 'FuzzParse$$' $(FUZZTIME)
	.ci/fuzz-target ./policy/ 'FuzzDecode$$' $(FUZZTIME)
	.ci/fuzz-target ./lab/ 'FuzzParseTopology' $(FUZZTIME)
	.ci/fuzz-target ./pod/ 'FuzzDecode$$' $(FUZZTIME)
	.ci/fuzz-target ./pod/ 'FuzzDecodeNamespace' $(FUZZTIME)
	.ci/fuzz-target ./controlplane/k8s/apis/v1alpha1/ 'FuzzDocument' $(FUZZTIME)

## generate: the gRPC code in api/ (protoc from Debian's protobuf-compiler
## 3.21.12; the plugins are pinned in go.mod's tool block), the datapath's
## eBPF object in bpf/ (bpf2go, pinned in go.mod, with Debian bookworm's
## clang-14 and llvm-strip-14: see bpf/gen.go), and the CRDs in deploy/crds
## with the DeepCopy methods of controlplane/k8s/apis/v1alpha1 (controller-gen,
## pinned in its own module, tools/controller-gen). CI fails on a diff.
generate:
	@command -v clang-14 >/dev/null && command -v llvm-strip-14 >/dev/null || \
	  { echo "make generate needs clang-14 and llvm-strip-14: apt-get install clang-14 llvm-14"; exit 1; }
	$(GO) build -o $(BIN)/protoc-gen-go google.golang.org/protobuf/cmd/protoc-gen-go
	$(GO) build -o $(BIN)/protoc-gen-go-grpc google.golang.org/grpc/cmd/protoc-gen-go-grpc
	$(GO) -C tools/controller-gen build -o $(CURDIR)/$(BIN)/controller-gen sigs.k8s.io/controller-tools/cmd/controller-gen
	$(GO) generate ./...

clean:
	rm -rf $(BIN)
