"""Everything Docker: connecting (`client`), the sandbox (`sandbox`), the docker Backend
(`backend`), image pins (`image`) and offline builds (`build`)."""
