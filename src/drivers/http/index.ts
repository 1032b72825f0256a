export { HTTP_NUM_STATES, httpDriver, httpsDriver, makeHttpDrivers } from './http.js';
export { HTTP_OPTION_KEYS, HTTP_RUNTIME_OPTS, HTTP_READAHEAD_DEFAULT, HTTP_TIMEOUT_DEFAULT, type HttpOptions, parseHttpOptions } from './options.js';
export {
  fetchTransport,
  getHttpTransport,
  type HttpRequest,
  type HttpResponse,
  type HttpTransport,
  setHttpTransport,
} from './transport.js';
