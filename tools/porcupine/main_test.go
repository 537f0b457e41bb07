package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
)

func check(t *testing.T, events string) verdict {
	t.Helper()
	dir := t.TempDir()
	in := filepath.Join(dir, "h.json")
	out := filepath.Join(dir, "v.json")
	if err := os.WriteFile(in, []byte(`{"events": [`+events+`]}`), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := run(in, out, filepath.Join(dir, "v.html"), 10e9); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	var v verdict
	if err := json.Unmarshal(raw, &v); err != nil {
		t.Fatal(err)
	}
	return v
}

const write1 = `{"index":0,"type":"invoke","process":0,"f":"write","key":"k","value":1,"time":0},
{"index":1,"type":"ok","process":0,"f":"write","key":"k","value":1,"time":10},`

func TestReadOfLatestWriteIsLinearizable(t *testing.T) {
	v := check(t, write1+`{"index":2,"type":"invoke","process":1,"f":"read","key":"k","value":null,"time":20},
{"index":3,"type":"ok","process":1,"f":"read","key":"k","value":1,"time":30}`)
	if !v.Valid || v.Result != "Ok" {
		t.Fatalf("want Ok, got %+v", v)
	}
}

func TestReadOfAbsentKeyAfterWriteIsIllegal(t *testing.T) {
	v := check(t, write1+`{"index":2,"type":"invoke","process":1,"f":"read","key":"k","value":null,"time":20},
{"index":3,"type":"ok","process":1,"f":"read","key":"k","value":null,"time":30}`)
	if v.Valid || v.Result != "Illegal" {
		t.Fatalf("want Illegal, got %+v", v)
	}
}

func TestIndeterminateCasMayHaveHappened(t *testing.T) {
	v := check(t, write1+`{"index":2,"type":"invoke","process":1,"f":"cas","key":"k","value":[1,2],"time":20},
{"index":3,"type":"info","process":1,"f":"cas","key":"k","value":[1,2],"time":30},
{"index":4,"type":"invoke","process":2,"f":"read","key":"k","value":null,"time":40},
{"index":5,"type":"ok","process":2,"f":"read","key":"k","value":2,"time":50}`)
	if !v.Valid || v.Indeterminate != 1 {
		t.Fatalf("want Ok with one indeterminate op, got %+v", v)
	}
}

func TestConflictWithNoWriteBetweenIsIllegal(t *testing.T) {
	// The value stayed 1 throughout, yet the cas from 1 was answered CONFLICT.
	v := check(t, write1+`{"index":2,"type":"invoke","process":1,"f":"refused","key":"k","value":[1,2],"time":20},
{"index":3,"type":"ok","process":1,"f":"refused","key":"k","value":[1,2],"time":30},
{"index":4,"type":"invoke","process":2,"f":"read","key":"k","value":null,"time":40},
{"index":5,"type":"ok","process":2,"f":"read","key":"k","value":1,"time":50}`)
	if v.Valid || v.Result != "Illegal" {
		t.Fatalf("want Illegal, got %+v", v)
	}
}

func TestConflictWithAConcurrentWriteIsLinearizable(t *testing.T) {
	v := check(t, write1+`{"index":2,"type":"invoke","process":1,"f":"refused","key":"k","value":[1,2],"time":20},
{"index":3,"type":"invoke","process":2,"f":"write","key":"k","value":3,"time":21},
{"index":4,"type":"ok","process":2,"f":"write","key":"k","value":3,"time":25},
{"index":5,"type":"ok","process":1,"f":"refused","key":"k","value":[1,2],"time":30}`)
	if !v.Valid || v.Result != "Ok" {
		t.Fatalf("want Ok, got %+v", v)
	}
}
