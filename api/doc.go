// Package api holds the node agent's gRPC API: agent.proto and the code
// protoc generates from it (agent.pb.go, agent_grpc.pb.go).
//
// Regenerate with `make generate`, which runs the go:generate line below
// with Debian's protoc 3.21.12 and the plugins pinned in go.mod's tool
// block. CI regenerates and fails on a diff.
package api

//go:generate protoc --proto_path=. --plugin=protoc-gen-go=../bin/protoc-gen-go --plugin=protoc-gen-go-grpc=../bin/protoc-gen-go-grpc --go_out=. --go_opt=paths=source_relative --go-grpc_out=. --go-grpc_opt=paths=source_relative agent.proto
