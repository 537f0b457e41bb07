package hlc_test

import (
	"fmt"

	"github.com/meridian-rt/meridian/sdk/go/hlc"
)

func ExampleDecode() {
	ts, err := hlc.Decode("019ab697e8000007")
	if err != nil {
		panic(err)
	}
	fmt.Println(ts.WallMs, ts.Logical, ts.Int())
	// Output: 1764000000000 7 115605504000000007
}

func ExampleFromInt() {
	// Entry.Hlc and WriteResponse.Hlc carry the 64-bit form.
	ts := hlc.FromInt(115605504000065535)
	fmt.Println(ts, ts.Encode())
	// Output: 1764000000000.65535 019ab697e800ffff
}
