// Send a file with sendWhatsAppMedia from Node, with Apollo Client and
// apollo-upload-client, unmodified: the GraphQL multipart request specification.
// Reads WAGATE_URL (default http://127.0.0.1:8080/graphql), WAGATE_TOKEN (not needed
// with --demo), WAGATE_TO (the recipient), WAGATE_FILE (a path), WAGATE_KIND (default
// DOCUMENT) and WAGATE_CAPTION. Prints the accepted message, or the refusal's code.
import { readFile } from "node:fs/promises";
import { basename } from "node:path";
import { ApolloClient, InMemoryCache, gql } from "@apollo/client";
import UploadHttpLink from "apollo-upload-client/UploadHttpLink.mjs";

const url = process.env.WAGATE_URL || "http://127.0.0.1:8080/graphql";
const token = process.env.WAGATE_TOKEN || "";
const path = process.env.WAGATE_FILE;
if (!process.env.WAGATE_TO || !path) {
  console.error("set WAGATE_TO (the recipient) and WAGATE_FILE (the file to send)");
  process.exit(2);
}

const client = new ApolloClient({
  cache: new InMemoryCache(),
  link: new UploadHttpLink({ uri: url,
    headers: token ? { Authorization: `Bearer ${token}` } : {} }),
});

const SEND = gql`mutation SendMedia($input: SendWhatsAppMediaInput!) {
  sendWhatsAppMedia(input: $input) { id state media { kind mimeType size sha256 url } } }`;

const file = new File([await readFile(path)], basename(path));
try {
  const { data } = await client.mutate({ mutation: SEND, variables: { input: {
    phoneNumber: process.env.WAGATE_TO, kind: process.env.WAGATE_KIND || "DOCUMENT",
    caption: process.env.WAGATE_CAPTION || null, file } } });
  const m = data.sendWhatsAppMedia;
  console.log(`accepted ${m.id}: ${m.state} ${m.media.kind} ${m.media.mimeType} ` +
    `${m.media.size} bytes sha256 ${m.media.sha256} at ${m.media.url}`);
} catch (err) {
  const code = err.errors?.[0]?.extensions?.code || err.graphQLErrors?.[0]?.extensions?.code;
  console.log(`refused: ${code || err.message}`);
  process.exitCode = 1;
}
