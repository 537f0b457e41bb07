from bench.regional.run import main

raise SystemExit(main())
