package bpf

import (
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"
)

// abiTypes are the key and value types the datapath shares, with their
// sizes: changing one breaks maps pinned by earlier agents (see the package
// documentation's ABI section), so a change must show up here.
var abiTypes = []struct {
	typ  reflect.Type
	size uintptr
}{
	{reflect.TypeFor[IPCacheKey](), 24},
	{reflect.TypeFor[IPCacheValue](), 24},
	{reflect.TypeFor[EndpointKey](), 20},
	{reflect.TypeFor[EndpointValue](), 28},
	{reflect.TypeFor[PolicyKey](), 16},
	{reflect.TypeFor[PolicyValue](), 8},
	{reflect.TypeFor[ServiceKey](), 24},
	{reflect.TypeFor[ServiceValue](), 12},
	{reflect.TypeFor[BackendKey](), 4},
	{reflect.TypeFor[BackendValue](), 24},
	{reflect.TypeFor[CIDRValue](), 4},
	{reflect.TypeFor[CTKey](), 40},
	{reflect.TypeFor[CTValue](), 56},
	{reflect.TypeFor[flowRecord](), flowRecordSize},
	{reflect.TypeFor[counterValue](), counterValueSize},
}

func TestABISizes(t *testing.T) {
	for _, a := range abiTypes {
		if a.typ.Size() != a.size {
			t.Errorf("%s is %d bytes; the ABI says %d", a.typ.Name(), a.typ.Size(), a.size)
		}
	}
	// Each type is usable as a map key or value: no implicit padding, no
	// unexported fields.
	for _, check := range []func() (int, error){
		layoutSize[IPCacheKey], layoutSize[IPCacheValue], layoutSize[EndpointKey], layoutSize[EndpointValue],
		layoutSize[PolicyKey], layoutSize[PolicyValue], layoutSize[ServiceKey], layoutSize[ServiceValue],
		layoutSize[BackendKey], layoutSize[BackendValue], layoutSize[CIDRValue],
		layoutSize[CTKey], layoutSize[CTValue], layoutSize[flowRecord], layoutSize[counterValue],
	} {
		if _, err := check(); err != nil {
			t.Error(err)
		}
	}
	type hidden struct {
		A uint32
		b uint32
	}
	_ = hidden{}.b
	if _, err := layoutSize[hidden](); err == nil || !strings.Contains(err.Error(), "unexported field b") {
		t.Errorf("layoutSize of a type with an unexported field = %v", err)
	}
	if _, err := layoutSize[[]byte](); err == nil {
		t.Error("layoutSize of a slice succeeded")
	}
}

// TestCLayouts compiles the C struct in each type's doc comment for the BPF
// target, with static assertions that its size and every member's offset
// and size are those of the Go type's fields, in order. The comments are
// the datapath's reference, so they must not drift from the code.
func TestCLayouts(t *testing.T) {
	clang := findClang(t, "cannot check the C structs in the doc comments")
	structs := docStructs(t)
	var src strings.Builder
	src.WriteString("typedef unsigned char __u8;\ntypedef unsigned short __u16;\ntypedef unsigned int __u32;\n" +
		"typedef unsigned long long __u64;\ntypedef __u16 __be16;\n\n")
	for _, a := range abiTypes {
		c, ok := structs[a.typ.Name()]
		if !ok {
			t.Errorf("%s: its doc comment has no C struct", a.typ.Name())
			continue
		}
		if len(c.members) != a.typ.NumField() {
			t.Errorf("%s: the C struct %s has %d members, the Go type %d fields", a.typ.Name(), c.name, len(c.members), a.typ.NumField())
			continue
		}
		src.WriteString(c.text + "\n")
		fmt.Fprintf(&src, "_Static_assert(sizeof(struct %s) == %d, \"size of %s\");\n", c.name, a.typ.Size(), a.typ.Name())
		for i, m := range c.members {
			f := a.typ.Field(i)
			fmt.Fprintf(&src, "_Static_assert(__builtin_offsetof(struct %s, %s) == %d, \"offset of %s.%s (Go %s)\");\n",
				c.name, m, f.Offset, c.name, m, f.Name)
			fmt.Fprintf(&src, "_Static_assert(sizeof(((struct %s *)0)->%s) == %d, \"size of %s.%s (Go %s)\");\n",
				c.name, m, f.Type.Size(), c.name, m, f.Name)
		}
		src.WriteString("\n")
	}
	file := filepath.Join(t.TempDir(), "abi.c")
	if err := os.WriteFile(file, []byte(src.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(clang, "-target", "bpf", "-fsyntax-only", "-Werror", file).CombinedOutput()
	if err != nil {
		t.Fatalf("the C structs in the doc comments do not match the Go types:\n%s\n%s", out, src.String())
	}
}

// docStruct is a C struct found in a doc comment.
type docStruct struct {
	name    string
	text    string
	members []string
}

var (
	cStructStart = regexp.MustCompile(`^\s*struct (mp_\w+) \{`)
	cMember      = regexp.MustCompile(`^\s*(__u8|__u16|__u32|__u64|__be16)\s+(\w+)(\[\d+\])?;`)
)

// docStructs returns, by Go type name, the C struct in the doc comment of
// each type declared in the package's non-test files.
func docStructs(t *testing.T) map[string]docStruct {
	t.Helper()
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	out := make(map[string]docStruct)
	fset := token.NewFileSet()
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, name, nil, parser.ParseComments)
		if err != nil {
			t.Fatal(err)
		}
		for _, decl := range f.Decls {
			gd, ok := decl.(*ast.GenDecl)
			if !ok || gd.Tok != token.TYPE {
				continue
			}
			for _, spec := range gd.Specs {
				ts := spec.(*ast.TypeSpec)
				doc := ts.Doc
				if doc == nil {
					doc = gd.Doc
				}
				if doc == nil {
					continue
				}
				if s, ok := parseDocStruct(doc.Text()); ok {
					out[ts.Name.Name] = s
				}
			}
		}
	}
	return out
}

// parseDocStruct finds a "struct mp_... { ... };" block in text.
func parseDocStruct(text string) (docStruct, bool) {
	var s docStruct
	in := false
	var lines []string
	for _, line := range strings.Split(text, "\n") {
		if !in {
			if m := cStructStart.FindStringSubmatch(line); m != nil {
				s.name, in = m[1], true
				lines = append(lines, line)
			}
			continue
		}
		lines = append(lines, line)
		if strings.TrimSpace(line) == "};" {
			s.text = strings.Join(lines, "\n")
			return s, true
		}
		if m := cMember.FindStringSubmatch(line); m != nil {
			s.members = append(s.members, m[2])
		}
	}
	return s, false
}

// findClang returns the C compiler for the layout checks: clang-14, the
// one `make generate` pins (Debian installs no plain clang with it), or
// any clang. Without one the test skips, unless MESHPLANE_REQUIRE_BPF is
// set (as CI does): then the checks must run.
func findClang(t *testing.T, what string) string {
	t.Helper()
	for _, name := range []string{"clang-14", "clang"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("MESHPLANE_REQUIRE_BPF") != "" {
		t.Fatalf("neither clang-14 nor clang is installed (apt-get install clang-14): %s", what)
	}
	t.Skipf("clang is not installed: %s", what)
	return ""
}
