package canonical_test

import (
	"fmt"

	"github.com/meridian-rt/meridian/sdk/go/canonical"
)

func ExampleCanonicalize() {
	out, err := canonical.Canonicalize([]byte(`{ "sku": "A-1", "qty": 2.0, "price": 12.50 }`))
	if err != nil {
		panic(err)
	}
	fmt.Println(string(out))
	// Output: {"price":12.5,"qty":2,"sku":"A-1"}
}

func ExampleFingerprint() {
	a, _ := canonical.Fingerprint([]byte(`{"sku":"A-1","qty":2}`), canonical.JSON)
	b, _ := canonical.Fingerprint([]byte(`{ "qty" : 2.0, "sku":"A-1" }`), canonical.JSON)
	fmt.Println(a == b, a)
	// Output: true 3e2ac8717ff0cc0e1d7e17074c04e8d66bfaafd84035efad486f7778c07d7de3
}

func ExampleError() {
	_, err := canonical.Canonicalize([]byte(`{"a":1,"a":2}`))
	fmt.Println(err)
	// Output: canonical: payload: object keys must be unique (I-JSON), "a" appears twice (at byte 7)
}
