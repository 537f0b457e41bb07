from bench.flags.run import main

raise SystemExit(main())
