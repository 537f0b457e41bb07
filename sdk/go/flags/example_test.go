package flags_test

import (
	"fmt"

	"github.com/meridian-rt/meridian/sdk/go/flags"
)

func ExampleFractional() {
	// {"fractional": [["on", 50], ["off", 50]]} in the flag "new-checkout",
	// evaluated with {"targetingKey": "user-1"}.
	variant, ok := flags.Fractional(flags.BucketBy("new-checkout", "user-1"),
		[]flags.Weight{{Variant: "on", Weight: 50}, {Variant: "off", Weight: 50}})
	fmt.Println(variant, ok)
	// Output: on true
}
