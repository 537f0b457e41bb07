from bench.freshness.run import main

raise SystemExit(main())
