package meridian_test

import (
	"bytes"
	"flag"
	"go/ast"
	"go/doc"
	"go/parser"
	"go/printer"
	"go/token"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite testdata/public_api/go.txt from the package")

// pinPath is the Go SDK's pin among the repository's shared test data.
var pinPath = filepath.Join("..", "..", "..", "testdata", "public_api", "go.txt")

// publicAPI lists every exported declaration of package meridian (test files
// excluded): constants, variables, functions, types with their exported
// fields, and methods, one per line with its signature.
func publicAPI(t *testing.T) []string {
	t.Helper()
	fset := token.NewFileSet()
	pkgs, err := parser.ParseDir(fset, ".", func(fi os.FileInfo) bool {
		return !strings.HasSuffix(fi.Name(), "_test.go")
	}, parser.ParseComments)
	if err != nil {
		t.Fatal(err)
	}
	pkg, ok := pkgs["meridian"]
	if !ok {
		t.Fatalf("no package meridian in %v", pkgs)
	}
	d := doc.New(pkg, "github.com/meridian-rt/meridian/sdk/go/meridian", 0)
	var out []string
	show := func(node any) string {
		var buf bytes.Buffer
		if err := printer.Fprint(&buf, fset, node); err != nil {
			t.Fatal(err)
		}
		return strings.Join(strings.Fields(buf.String()), " ")
	}
	values := func(prefix string, vs []*doc.Value) {
		for _, v := range vs {
			for _, spec := range v.Decl.Specs {
				for _, name := range spec.(*ast.ValueSpec).Names {
					if name.IsExported() {
						out = append(out, prefix+" "+name.Name)
					}
				}
			}
		}
	}
	funcs := func(fs []*doc.Func) {
		for _, f := range fs {
			decl := *f.Decl
			decl.Body, decl.Doc = nil, nil
			out = append(out, show(&decl))
		}
	}
	values("const", d.Consts)
	values("var", d.Vars)
	funcs(d.Funcs)
	for _, typ := range d.Types {
		spec := typ.Decl.Specs[0].(*ast.TypeSpec)
		switch st := spec.Type.(type) {
		case *ast.StructType:
			out = append(out, "type "+typ.Name+" struct")
			for _, field := range st.Fields.List {
				for _, name := range field.Names {
					if name.IsExported() {
						out = append(out, "  "+typ.Name+"."+name.Name+" "+show(field.Type))
					}
				}
			}
		case *ast.InterfaceType:
			out = append(out, "type "+typ.Name+" interface")
			for _, m := range st.Methods.List {
				for _, name := range m.Names {
					out = append(out, "  "+typ.Name+"."+name.Name+" "+show(m.Type))
				}
			}
		default:
			out = append(out, "type "+typ.Name+" "+show(spec.Type))
		}
		values("const", typ.Consts)
		values("var", typ.Vars)
		funcs(typ.Funcs)
		funcs(typ.Methods)
	}
	return out // go/doc orders each list by name
}

// TestPublicAPI fails when an exported name or signature of the SDK changes,
// so an accidental break shows up in review. If the change is intended:
// go test -run TestPublicAPI -update
func TestPublicAPI(t *testing.T) {
	got := publicAPI(t)
	if len(got) < 30 {
		t.Fatalf("found only %d public declarations: the scan is broken", len(got))
	}
	text := strings.Join(got, "\n") + "\n"
	if *update {
		if err := os.WriteFile(pinPath, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	raw, err := os.ReadFile(pinPath)
	if err != nil {
		t.Fatal(err)
	}
	pinned := strings.Split(strings.TrimSuffix(string(raw), "\n"), "\n")
	in := func(xs []string) map[string]bool {
		m := map[string]bool{}
		for _, x := range xs {
			m[x] = true
		}
		return m
	}
	have, want := in(got), in(pinned)
	var diff []string
	for _, x := range pinned {
		if !have[x] {
			diff = append(diff, "- "+x)
		}
	}
	for _, x := range got {
		if !want[x] {
			diff = append(diff, "+ "+x)
		}
	}
	if len(diff) > 0 {
		t.Fatalf("the public API differs from %s:\n%s\nif intended: go test -run TestPublicAPI -update",
			pinPath, strings.Join(diff, "\n"))
	}
}
