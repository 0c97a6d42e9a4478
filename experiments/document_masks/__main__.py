from experiments.document_masks.study import main

if __name__ == "__main__":
    main()
