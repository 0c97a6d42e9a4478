from experiments.paper_setting.study import main

if __name__ == "__main__":
    main()
