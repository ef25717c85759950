# otpd: build with the Rust toolchain, run from a slim image as an unprivileged user.
#   docker build -t otpd .
#   docker run -p 8080:80 -v otpd-data:/var/lib/otpd otpd
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
RUN cargo build --release --locked && strip target/release/otpd

FROM debian:bookworm-slim
COPY --from=build /src/target/release/otpd /usr/local/bin/otpd
# setcap: port 80 as a user, also where the runtime does not open low ports to all.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libcap2-bin \
 && setcap cap_net_bind_service=+ep /usr/local/bin/otpd \
 && apt-get purge -y libcap2-bin && apt-get autoremove -y \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/otpd --create-home --shell /usr/sbin/nologin otpd
# Numeric, so that runAsNonRoot can check it.
USER 10001
WORKDIR /var/lib/otpd
ENV OTP_LISTEN=0.0.0.0:80 \
    OTP_STORE=sqlite:///var/lib/otpd/otpd.db \
    OTP_LOG_FORMAT=json
VOLUME ["/var/lib/otpd"]
EXPOSE 80
HEALTHCHECK --interval=10s --timeout=5s --start-period=5s --retries=3 CMD ["otpd", "health"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["otpd"]
