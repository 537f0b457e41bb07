from bench.invoke.run import main

raise SystemExit(main())
