from g2face_eval.cli import main

raise SystemExit(main())
