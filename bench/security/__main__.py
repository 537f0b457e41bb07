from bench.security.run import main

raise SystemExit(main())
