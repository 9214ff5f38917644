/**
 * wagate from TypeScript with Apollo Client: the specification's calls, made to run.
 *
 * Checks the status, starts pairing if the account is not linked, polls until the
 * QR code was scanned, sends a notification, and shows how a refused send looks
 * (`extensions.code`). Configure it with environment variables:
 *   WAGATE_URL    the GraphQL endpoint (default http://127.0.0.1:8080/graphql)
 *   WAGATE_TOKEN  an API token (not needed by `wagate serve --demo`)
 *   WAGATE_TO     the recipient, with its country code (default +14155552671)
 *   WAGATE_TEXT   the message (default "Your code is 123456")
 *   WAGATE_POLL_SECONDS, WAGATE_LINK_TIMEOUT_SECONDS  status polling (2 s, 180 s)
 */
import { ApolloClient, CombinedGraphQLErrors, HttpLink, InMemoryCache, gql } from "@apollo/client";

const url = process.env.WAGATE_URL ?? "http://127.0.0.1:8080/graphql";
const token = process.env.WAGATE_TOKEN;
const recipient = process.env.WAGATE_TO ?? "+14155552671";
const text = process.env.WAGATE_TEXT ?? "Your code is 123456";
const pollMs = Number(process.env.WAGATE_POLL_SECONDS ?? "2") * 1000;
const linkTimeoutMs = Number(process.env.WAGATE_LINK_TIMEOUT_SECONDS ?? "180") * 1000;

const client = new ApolloClient({
  link: new HttpLink({
    uri: url,
    headers: token ? { Authorization: `Bearer ${token}` } : {},
  }),
  cache: new InMemoryCache(),
  // The status changes on the gateway, not in this process: a cached answer would
  // poll the same "not connected" for ever. Always ask the gateway.
  defaultOptions: { query: { fetchPolicy: "network-only" } },
});

interface Status {
  connected: boolean;
  state: string;
  qrCodeSvg: string | null;
  phoneNumber: string | null;
}

const CHECK_STATUS = gql`
  query CheckStatus {
    whatsAppStatus {
      connected
      state
      qrCodeSvg
      phoneNumber
    }
  }
`;

const CONNECT = gql`
  mutation Connect {
    whatsAppConnect
  }
`;

const SEND_MESSAGE = gql`
  mutation SendMessage($phoneNumber: String!, $message: String!) {
    sendWhatsAppNotification(phoneNumber: $phoneNumber, message: $message)
  }
`;

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

async function status(): Promise<Status> {
  const response = await client.query<{ whatsAppStatus: Status }>({ query: CHECK_STATUS });
  if (!response.data) throw new Error("the gateway answered no status");
  return response.data.whatsAppStatus;
}

/** Connects and waits until the QR code was scanned; false when that did not happen in time. */
async function ensureLinked(): Promise<boolean> {
  let current = await status();
  if (current.connected) return true;
  await client.mutate({ mutation: CONNECT });
  // Right after whatsAppConnect the state may still be NEW or CONNECTING, without a
  // QR code: keep polling until it is QR_PENDING (show the code) and then CONNECTED.
  const deadline = Date.now() + linkTimeoutMs;
  let shownState = "";
  while (Date.now() < deadline) {
    current = await status();
    if (current.connected) return true;
    if (current.state !== shownState) {
      shownState = current.state;
      console.log(`state: ${current.state}`);
      if (current.qrCodeSvg) {
        console.log("scan the QR code (qrCodeSvg goes into <img src> as it is); " +
          "it renews itself, so show the latest one");
      }
    }
    await sleep(pollMs);
  }
  return false;
}

/** Sends one notification; a refusal is printed with its code and returns false. */
async function sendMessage(phoneNumber: string, message: string): Promise<boolean> {
  try {
    const response = await client.mutate<{ sendWhatsAppNotification: boolean }>({
      mutation: SEND_MESSAGE,
      variables: { phoneNumber, message },
    });
    return response.data?.sendWhatsAppNotification ?? false;
  } catch (error) {
    if (CombinedGraphQLErrors.is(error)) {
      for (const e of error.errors) {
        // RATE_LIMITED also carries extensions.retryAfterSeconds.
        console.log(`refused: ${String(e.extensions?.code)}: ${e.message}`);
      }
      return false;
    }
    throw error; // the gateway could not be reached: not an answer
  }
}

async function main(): Promise<number> {
  if (!(await ensureLinked())) {
    console.log("not linked in time: scan the QR code, then run this again");
    return 1;
  }
  const linked = await status();
  console.log(`connected as ${linked.phoneNumber}`);
  console.log(`sent: ${await sendMessage(recipient, text)}`);
  // A number without its country code is refused at once, nothing is stored.
  console.log(`sent: ${await sendMessage("555 2671", text)}`);
  return 0;
}

main().then(
  (code) => process.exit(code),
  (error: unknown) => {
    console.error(error);
    process.exit(2);
  },
);
